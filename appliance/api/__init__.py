"""The public OpenAI-compatible API: routes, request schemas, response formatting, one request's generation.

A route parses and validates the body (schemas), hands it to the serving core (appliance.serving)
and turns what comes back into JSON or server-sent events (formatting, generation). Nothing below
this package imports it.
"""

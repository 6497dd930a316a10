"""The public OpenAI-compatible API: routes, request schemas, one request's plan, generation and answer.

A generating route reads one way (endpoint.py): the body (schemas) → its Ask → admission's lease
on a model (appliance.serving) → the plan (render) → the generation every API shares → the API's
formatter (formatters/) → JSON or server-sent events → accounting. Nothing below this package
imports it.
"""

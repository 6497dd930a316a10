"""The serving core: the model pool, admission, readiness and canary, generation on the engines, accounting.

It knows nothing of HTTP: errors leave it as appliance.errors.APIError, and the API layer renders them.
"""

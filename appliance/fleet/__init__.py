"""Several boxes behind one endpoint: the gateway (smg, Shepherd Model Gateway) and this box's place behind it.

Routing, health checks, retries and circuit breakers are smg's; keys are the shared PostgreSQL
key store's. What is ours: writing smg's systemd unit (gateway_unit), calling its admin API
(gateway_api), remembering whether this box joined (membership), and reading the figures the
Fleet screen shows (fleet_view).
"""

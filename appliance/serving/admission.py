"""Admission, the first stage of a request: the key (401/403), its networks (403), the model (404/403),
the limits (429). Routing (routing.py) picks the model, or its fallback.

A wrong key counts against the client address's lock-out (appliance/serving/lockout.py). It ends
with the request admitted to one served model, where it stays to the end: admission returns the
request's lease on that model, which the request releases when it ends.
"""

import asyncio

from appliance.errors import APIError
from appliance.keys import AuthError, KeyRecord, KeyStore, KeyStoreUnavailable, RateLimited
from appliance.serving.context import RequestContext
from appliance.serving.lockout import AuthLockout
from appliance.serving.pool import ModelPool
from appliance.serving.readiness import Readiness
from appliance.serving.routing import Router
from appliance.serving.served_model import ModelLease


class Admission:
    def __init__(self, keys: KeyStore | None, pool: ModelPool, readiness: Readiness, lockout: AuthLockout,
                 router: Router):
        self.keys = keys
        self.pool = pool
        self.router = router
        self.readiness = readiness
        self.lockout = lockout

    async def admit(self, api_key: str | None, model: str, ctx: RequestContext | None, client: str | None = None,
                    avoid: frozenset[str] = frozenset()) -> ModelLease:
        """Check the key and the client address it is used from, route `model` (skipping the models in `avoid`:
        they failed this request) and check the key's limits. Returns the request's lease on its model."""
        record = await self.authorize(api_key, ctx, client)
        try:
            self.keys.check_model(record, model)  # before routing: a name the key may not use loads nothing
        except AuthError as e:
            raise model_not_allowed(e) from None
        route = await self.router.route(model, record.allowed_models, avoid)
        self.readiness.check_draining()
        lease = route.served.lease()  # before the next await: a swap's or an unload's drain must wait for it
        try:
            await asyncio.to_thread(self.keys.check_request, record, model)  # counted under the name it sent
        except (AuthError, RateLimited) as e:
            lease.release()
            if isinstance(e, RateLimited):
                raise APIError(429, e.message, code="rate_limit_exceeded", retry_after_s=e.retry_after_s) from None
            raise model_not_allowed(e) from None
        if ctx is not None:
            ctx.admitted(route.served, route.fallback, record.allowed_models)
        return lease

    async def authorize(self, api_key: str | None, ctx: RequestContext | None = None,
                        client: str | None = None) -> KeyRecord:
        """Check the key and the client address (`client`) it is used from (the routes that name no model to
        generate with stop here). Returns the key record."""
        retry = self.pool.config.retry_after_s
        self.readiness.check_draining()
        if not self.pool.resident and self.pool.swap is None:  # starting, or failed: refused before the key
            self.pool.check_loaded()
        if self.keys is None:
            raise APIError(503, "the key store is not available", retry_after_s=retry)
        try:
            record = await asyncio.to_thread(self.keys.authenticate, api_key)
        except AuthError as e:
            if e.status == 401 and api_key:  # a guess, not a client that forgot its key
                self.lockout.failed(client)
            raise APIError(e.status, e.message, code="invalid_api_key" if e.status == 401 else "key_not_active") from None
        except KeyStoreUnavailable as e:
            raise APIError(503, e.message, code="key_store_unavailable", retry_after_s=e.retry_after_s) from None
        if ctx is not None:
            ctx.identified(record.id, record.priority, record.weight)  # a refusal below (networks, model, rate limit) is logged with the key's id
        if not record.allows_address(client):
            raise APIError(403, f"API key {record.id} may not be used from {client or 'an unknown address'}: it is "
                                f"limited to {', '.join(record.allowed_networks)}; call from there, or widen the "
                                "key's networks (appliance keys update --networks)", code="network_not_allowed")
        return record


def model_not_allowed(e: AuthError) -> APIError:
    return APIError(e.status, e.message, param="model", code="model_not_allowed")

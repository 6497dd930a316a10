"""Admission, the first stage of a request: the key (401/403), its networks (403), the model (404/403),
the limits (429). Routing (routing.py) picks the model, or its fallback.

A wrong key counts against the client address's lock-out (appliance/serving/lockout.py). It ends
with the request admitted to one served model, where it stays to the end.
"""

import asyncio
import time

from appliance.errors import APIError
from appliance.keys import AuthError, KeyStore, KeyStoreUnavailable, RateLimited
from appliance.serving.context import RequestContext
from appliance.serving.lockout import AuthLockout
from appliance.serving.pool import ModelPool
from appliance.serving.readiness import Readiness
from appliance.serving.routing import Router


class Admission:
    def __init__(self, keys: KeyStore | None, pool: ModelPool, readiness: Readiness, lockout: AuthLockout,
                 router: Router):
        self.keys = keys
        self.pool = pool
        self.router = router
        self.readiness = readiness
        self.lockout = lockout

    async def authorize(self, api_key: str | None, model: str | None, ctx: RequestContext | None = None,
                        client: str | None = None, avoid: frozenset[str] = frozenset()):
        """Check the key and the client address (`client`) it is used from, then (when `model` is
        given) route, skipping the models in `avoid` (they failed this request), and check limits.
        Returns the key record."""
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
            ctx.key_id = record.id  # a refusal below (networks, model, rate limit) is logged with the key's id
        if not record.allows_address(client):
            raise APIError(403, f"API key {record.id} may not be used from {client or 'an unknown address'}: it is "
                                f"limited to {', '.join(record.allowed_networks)}; call from there, or widen the "
                                "key's networks (appliance keys update --networks)", code="network_not_allowed")
        if model is not None:
            await self._admit(record, model, ctx, avoid)
        return record

    async def _admit(self, record, model: str, ctx: RequestContext | None, avoid: frozenset[str]) -> None:
        """Route the request to a model and count it against the key's limits under the name it sent."""
        try:
            self.keys.check_model(record, model)  # before routing: a name the key may not use loads nothing
        except AuthError as e:
            raise model_not_allowed(e) from None
        route = await self.router.route(model, record.allowed_models, avoid)
        self.readiness.check_draining()
        served = route.served
        served.last_used = time.monotonic()
        if ctx is not None:  # before the next await: a swap's or an unload's drain must wait for this request
            ctx.served, ctx.fallback, ctx.allowed_models = served, route.fallback, record.allowed_models
            served.admitted.add(ctx)
        try:
            await asyncio.to_thread(self.keys.check_request, record, model)
        except (AuthError, RateLimited) as e:
            if ctx is not None:
                ctx.served = None
                served.admitted.discard(ctx)
            if isinstance(e, RateLimited):
                raise APIError(429, e.message, code="rate_limit_exceeded", retry_after_s=e.retry_after_s) from None
            raise model_not_allowed(e) from None


def model_not_allowed(e: AuthError) -> APIError:
    return APIError(e.status, e.message, param="model", code="model_not_allowed")

"""Admission, the first stage of a request: the key (401/403), its networks (403), the model (404/403),
the limits (429).

A wrong key counts against the client address's lock-out (appliance/serving/lockout.py). It ends
with the request admitted to one served model, where it stays to the end.
"""

import asyncio

from appliance.errors import APIError
from appliance.keys import AuthError, KeyStore, RateLimited
from appliance.serving.context import RequestContext
from appliance.serving.lockout import AuthLockout
from appliance.serving.pool import ModelPool
from appliance.serving.readiness import Readiness


class Admission:
    def __init__(self, keys: KeyStore | None, pool: ModelPool, readiness: Readiness, lockout: AuthLockout):
        self.keys = keys
        self.pool = pool
        self.readiness = readiness
        self.lockout = lockout

    async def authorize(self, api_key: str | None, model: str | None, ctx: RequestContext | None = None,
                        client: str | None = None):
        """Check the key and the client address (`client`) it is used from, then (when `model` is
        given) route and check limits. Returns the key record."""
        retry = self.pool.config.retry_after_s
        if self.pool.swap is None:  # during a swap, routing waits for it instead of refusing
            self.readiness.check_accepting()
        if self.keys is None:
            raise APIError(503, "the key store is not available", retry_after_s=retry)
        try:
            record = await asyncio.to_thread(self.keys.authenticate, api_key)
        except AuthError as e:
            if e.status == 401 and api_key:  # a guess, not a client that forgot its key
                self.lockout.failed(client)
            raise APIError(e.status, e.message, code="invalid_api_key" if e.status == 401 else "key_not_active") from None
        if ctx is not None:
            ctx.key_id = record.id  # a refusal below (networks, model, rate limit) is logged with the key's id
        if not record.allows_address(client):
            raise APIError(403, f"API key {record.id} may not be used from {client or 'an unknown address'}: it is "
                                f"limited to {', '.join(record.allowed_networks)}; call from there, or widen the "
                                "key's networks (appliance keys update --networks)", code="network_not_allowed")
        if model is not None:
            await self.pool.wait_for_swap(model)
            self.readiness.check_accepting()
            served = self.pool.resolve(model)
            if ctx is not None:  # before the next await: a sequential swap's drain must wait for this request
                ctx.served = served
                served.admitted.add(ctx)
            try:
                await asyncio.to_thread(self.keys.check_request, record, self.pool.served_name(served))
            except (AuthError, RateLimited) as e:
                if ctx is not None:
                    ctx.served = None
                    served.admitted.discard(ctx)
                if isinstance(e, RateLimited):
                    raise APIError(429, e.message, code="rate_limit_exceeded", retry_after_s=e.retry_after_s) from None
                raise APIError(e.status, e.message, param="model", code="model_not_allowed") from None
        return record

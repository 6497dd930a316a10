"""The public API's gate: refusals decided before routing, from the connection and the address alone.

A connection opened past max_connections gets 503 and is closed; a client address locked out
for failed authentications gets 429 with Retry-After on every /v1/ route. Neither reads the
request body nor touches the key store, so a flood of them costs little; neither is logged per
request (the lock-out is logged once when it starts).
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.api.connections import OVER_LIMIT
from appliance.errors import APIError, anthropic_route
from appliance.serving.lockout import AuthLockout


class ClientGate:
    def __init__(self, app: ASGIApp, lockout: AuthLockout, retry_after_s: float):
        self.app = app
        self.lockout = lockout
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                error, headers = refusal
                await error.to_response(headers=headers, anthropic=anthropic_route(scope["path"]))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[APIError, dict[str, str]] | None:
        limit = scope.get("state", {}).get(OVER_LIMIT)
        if limit is not None:
            error = APIError(503, f"the server has its maximum of {limit} connections open; retry later "
                                  "(the operator can raise max_connections)", code="too_many_connections",
                             retry_after_s=self.retry_after_s)
            return error, {"Connection": "close"}
        if scope["path"].startswith("/v1/"):
            client = scope.get("client")
            address = client[0] if client else None
            left = self.lockout.retry_after_s(address)
            if left is not None:
                error = APIError(429, f"too many failed authentications from {address}: it is locked out for "
                                      f"{left:.0f} s more, whatever key it sends; check the API key your client "
                                      "uses", code="auth_locked_out", retry_after_s=left)
                return error, {}
        return None

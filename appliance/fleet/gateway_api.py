"""smg's admin API, as the fleet commands use it: list, register and remove workers; its metrics.

smg identifies a worker by probing its /v1/models with the worker's own key (a box's fleet-probe
key), and forwards each client's Authorization header unchanged; it uses the worker's key only when
a client sent none, which is why that key may list models and nothing else. Registration is
asynchronous: POST /workers answers 202 with the worker's id, and the worker appears in GET
/workers once its probes passed; DELETE is queued too, and the worker may be given requests until
it is gone from GET /workers.
"""

from __future__ import annotations

import time

import httpx


class GatewayError(Exception):
    """The gateway refused or could not be reached; the message says which and what to do."""


class GatewayAPI:
    def __init__(self, url: str, admin_key: str, verify: bool | str = True, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {admin_key}"},
                                    verify=verify, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GatewayAPI:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise GatewayError(f"the gateway at {self.url} does not answer ({type(e).__name__}: {e}); is "
                               "appliance-gateway.service running there?") from None
        if response.status_code in (401, 403):
            raise GatewayError(f"the gateway at {self.url} refused the admin key (HTTP {response.status_code}): use "
                               "the key `appliance fleet gateway` wrote to /etc/appliance/gateway-admin.key there")
        if response.status_code >= 400:
            raise GatewayError(f"the gateway at {self.url} answered {method} {path} with HTTP "
                               f"{response.status_code}: {response.text[:300]}")
        return response

    def workers(self) -> list[dict]:
        return self._call("GET", "/workers").json().get("workers", [])

    def find(self, worker_url: str) -> dict | None:
        """The registered worker with this URL, if any."""
        want = worker_url.rstrip("/")
        return next((w for w in self.workers() if w.get("url", "").rstrip("/") == want), None)

    def add_worker(self, worker_url: str, api_key: str, labels: dict[str, str]) -> str:
        """Register a box; its worker id (the worker joins the rotation once smg's probes pass)."""
        body = {"url": worker_url, "api_key": api_key, "labels": labels}
        return self._call("POST", "/workers", json=body).json()["worker_id"]

    def remove_worker(self, worker_id: str, worker_url: str, timeout_s: float = 10.0) -> None:
        """Deregister a box and wait until the gateway no longer lists it (removal, like registration, is queued)."""
        self._call("DELETE", f"/workers/{worker_id}")
        deadline = time.monotonic() + timeout_s
        while self.find(worker_url) is not None:
            if time.monotonic() > deadline:
                raise GatewayError(f"the gateway still lists {worker_url} {timeout_s:.0f} s after removing it")
            time.sleep(0.05)

    def wait_registered(self, worker_url: str, timeout_s: float) -> dict:
        """Wait until the gateway lists the worker as healthy; its record."""
        deadline = time.monotonic() + timeout_s
        while True:
            worker = self.find(worker_url)
            if worker is not None and worker.get("is_healthy"):
                return worker
            if time.monotonic() > deadline:
                raise GatewayError(f"the gateway did not take {worker_url} into rotation within {timeout_s:.0f} s: "
                                   "can the gateway reach that URL, and is /ready 200 there? (journalctl -u "
                                   "appliance-gateway on the gateway says what its probes saw)")
            time.sleep(0.2)


def scrape(url: str, token: str | None = None, timeout_s: float = 3.0) -> dict[str, list[tuple[dict, float]]]:
    """A Prometheus endpoint's samples: name -> [(labels, value)]; empty when it cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
        response.raise_for_status()
    except httpx.HTTPError:
        return {}
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples

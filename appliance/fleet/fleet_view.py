"""The fleet as the gateway box sees it, for the Fleet screen and `appliance fleet status`.

Per box: smg's view (healthy, its circuit breaker, requests routed there, requests in flight) from
the gateway's admin API and metrics, and the box's own figures (queue, KV usage, tokens/s, prefix
cache hits) from its metrics listener, whose URL the box gave as a label when it joined (boxes
share one metrics_token; the gateway box's own is used). Tokens/s come from two readings, so the
view keeps the last reading of each box.
"""

from __future__ import annotations

import threading
import time

from appliance.fleet.gateway_api import GatewayAPI, GatewayError, scrape
from appliance.fleet.gateway_unit import read_gateway_description

CIRCUIT_STATES = {0: "closed", 1: "open", 2: "half-open"}


class FleetView:
    def __init__(self, config):
        self.config = config
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, float]] = {}  # worker url -> (monotonic time, generation tokens total)

    def read(self) -> dict | None:
        """None where no gateway runs on this box; else the gateway and each box (blocking: off the event loop)."""
        described = read_gateway_description(self.config.fleet_gateway_file)
        if described is None:
            return None
        view = {"url": described["url"], "metrics_url": described["metrics_url"], "error": None, "boxes": []}
        try:
            with open(described["admin_key_file"]) as f:
                admin_key = f.read().strip()
            # The gateway runs on this box and is reached on loopback, where its certificate's names do not apply.
            with GatewayAPI(described["url"], admin_key, verify=False, timeout_s=3.0) as api:
                workers = api.workers()
        except (OSError, GatewayError) as e:
            view["error"] = str(e)
            return view
        gateway = scrape(described["metrics_url"])
        for worker in sorted(workers, key=lambda w: w.get("url", "")):
            view["boxes"].append(self._box(worker, gateway))
        return view

    def _box(self, worker: dict, gateway: dict) -> dict:
        url = worker.get("url", "")
        labels = worker.get("labels") or {}
        circuit = _value(gateway, "smg_worker_cb_state", worker=url)
        box = {"url": url, "id": worker.get("id"), "host": labels.get("appliance_host"),
               "healthy": bool(worker.get("is_healthy")), "status": worker.get("status"),
               "circuit": CIRCUIT_STATES.get(int(circuit)) if circuit is not None else None,
               "gateway_in_flight": worker.get("load"),
               "routed_total": _value(gateway, "smg_worker_requests_total", worker=url),
               "waiting": None, "running": None, "kv_usage": None, "generation_tokens_per_s": None,
               "prefix_cache_hit_rate": None}
        metrics_url = labels.get("appliance_metrics")
        own = scrape(metrics_url, self.config.metrics_token) if metrics_url else {}
        if own:
            generated = _sum(own, "vllm:generation_tokens_total")
            queries = _sum(own, "vllm:prefix_cache_queries_total")
            box.update(waiting=_sum(own, "vllm:num_requests_waiting"), running=_sum(own, "vllm:num_requests_running"),
                       kv_usage=max((v for _, v in own.get("vllm:kv_cache_usage_perc", [])), default=None),
                       prefix_cache_hit_rate=_sum(own, "vllm:prefix_cache_hits_total") / queries if queries else None)
            now = time.monotonic()
            with self._lock:
                before = self._last.get(url)
                self._last[url] = (now, generated)
            if before is not None and now > before[0] and generated >= before[1]:
                box["generation_tokens_per_s"] = (generated - before[1]) / (now - before[0])
        return box


def _value(samples: dict, name: str, **labels) -> float | None:
    for sample_labels, value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


def _sum(samples: dict, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))

"""The service's own state as Prometheus gauges, read when Prometheus scrapes: what the shipped alerts watch.

appliance_ready and appliance_canary_* (readiness), appliance_health_check_status (the last
`appliance health` report: driver pin, GPUs, disk), appliance_key_budget_used_ratio (keys with a
token budget). Families are always declared, so dashboards and rules find them before any sample.
"""

import time
from datetime import datetime, timezone

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from appliance.keys.rate_limits import period_bounds
from appliance.ops.health import load_report

STATUSES = ("ok", "warn", "fail", "n/a")


class ServiceCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        readiness = self.service.readiness
        ready, _ = readiness.ready()
        yield GaugeMetricFamily("appliance_ready", "1 while /ready says the service takes requests.", value=float(ready))
        yield GaugeMetricFamily("appliance_canary_ok", "1 unless the last canary generation failed.",
                                value=float(readiness.last_canary_error is None and readiness.last_canary_ok is not None))
        age = GaugeMetricFamily("appliance_canary_age_seconds", "Seconds since generation was last seen to work.")
        if readiness.last_canary_ok is not None:
            age.add_metric([], time.monotonic() - readiness.last_canary_ok)
        yield age
        yield from self._health()
        yield from self._key_store()
        yield self._budgets()

    def _key_store(self):
        keys = self.service.keys
        up = GaugeMetricFamily("appliance_key_store_up", "1 while the key store's database answers (a fleet's PostgreSQL).",
                               labels=["shared"])
        admitted = CounterMetricFamily("appliance_key_store_outage_admissions",
                                       "Requests let in during a key store outage on a recent verification of their key.")
        refused = CounterMetricFamily("appliance_key_store_outage_refusals",
                                      "Requests refused with 503 during a key store outage (their key not verified recently).")
        if keys is not None:
            status = keys.outage.status()
            up.add_metric([str(keys.shared).lower()], float(status["reachable"]))
            admitted.add_metric([], status["grace_admissions"])
            refused.add_metric([], status["refusals"])
        yield from (up, admitted, refused)

    def _health(self):
        checks = GaugeMetricFamily("appliance_health_check_status",
                                   "The last `appliance health` report: 1 for each check's status.", labels=["check", "status"])
        checked = GaugeMetricFamily("appliance_health_checked_timestamp_seconds", "When `appliance health` last ran.")
        report = load_report(self.service.config.state_dir) or {}
        for check in report.get("checks") or []:
            for status in STATUSES:
                checks.add_metric([check.get("name", ""), status], float(check.get("status") == status))
        if report.get("checked_at"):
            checked.add_metric([], datetime.fromisoformat(report["checked_at"]).timestamp())
        yield checks
        yield checked

    def _budgets(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("appliance_key_budget_used_ratio",
                                   "Tokens a key used this budget period over its budget.", labels=["key_id"])
        keys = self.service.keys
        if keys is None or not keys.outage.reachable:  # figures would be stale, and the scrape must not wait
            return family
        now = datetime.now(timezone.utc)
        try:
            for record in keys.list():
                if record.budget_tokens is None or record.status(now) != "active":
                    continue
                start, _ = period_bounds(record.budget_period, now)
                days = (now.date() - start).days + 1
                used = sum(d.prompt_tokens + d.completion_tokens for d in keys.usage(record.id, days) if d.day >= start)
                family.add_metric([record.id], used / record.budget_tokens)
        except keys.database_errors:
            return GaugeMetricFamily(family.name, family.documentation, labels=["key_id"])  # none rather than some
        return family

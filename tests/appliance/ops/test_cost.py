"""Cost per million tokens: the busy-time shares, a recorded workload against a hand calculation, cost.db
across a restart, and the figures a live service exports."""

from datetime import datetime, timezone

import httpx
import pytest

from appliance.ops.cost import BusyClock, CostLedger
from tests.appliance.ops.test_metrics import scrape, value


class Clock:
    def __init__(self, when: datetime):
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def at(self, when: datetime) -> None:
        self.now = when.timestamp()


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=timezone.utc)


def test_requests_in_flight_share_each_second_and_the_shares_add_up_to_the_busy_time():
    clock = Clock(utc(14, 0))
    busy = BusyClock(clock)
    a = busy.start()          # t=0: a alone
    clock.now += 2
    b = busy.start()          # t=2: a and b
    clock.now += 2
    share_a = busy.end(a)     # t=4: b alone from here
    clock.now += 3
    share_b = busy.end(b)     # t=7, then idle: nobody's
    clock.now += 6
    c = busy.start()
    clock.now += 1
    assert (share_a, share_b, busy.end(c)) == (3.0, 4.0, 1.0)  # a: 2 + 2/2; b: 2/2 + 3: the 7 busy seconds


# A recorded workload, priced by hand: $2.40 an hour, a hosted API at $0.50 per million tokens.
# The service first ran at 10:00; the requests come at 11:30; the figures are read at 12:00.
#   key A, generation: 3 requests, 3,000 in + 9,000 out, 30 busy s
#   key B, generation: 1 request, 1,000 in + 1,000 out, 10 busy s
#   key A, embeddings: 1 request, 20,000 in, 10 busy s
# Today: 2 h billed = $4.80 over 50 busy s. Generation: 40/50 of it = $3.84, per million output
# 3.84 / 10,000 = $384, per million in + out 3.84 / 14,000 = $274.29. Embeddings: $0.96 / 20,000 = $48.
# Everything: 4.80 / 34,000 = $141.18 per million, 282.35 x the hosted price. Key A: (30 + 10)/50 = $3.84.
# Last hour (11:01 to 12:00, the figures are kept by minute): 59 min billed = $2.36, shared the same way.
def record_workload(ledger: CostLedger) -> None:
    for _ in range(3):
        ledger.record("small", "key-a", "generation", 1000, 3000, 10.0)
    ledger.record("small", "key-b", "generation", 1000, 1000, 10.0)
    ledger.record("small", "key-a", "embedding", 20_000, 0, 10.0)


def test_a_recorded_workload_costs_what_the_hand_calculation_says(tmp_path):
    clock = Clock(utc(14, 10))
    ledger = CostLedger(tmp_path / "cost.db", 2.40, "USD", 0.50, clock=clock)
    clock.at(utc(14, 11, 30))
    record_workload(ledger)
    clock.at(utc(14, 12))
    figures = ledger.summary(detail=True)
    today = figures["windows"]["today"]
    assert today["billed_s"] == 7200 and today["busy_s"] == 50
    assert today["cost"] == pytest.approx(4.80)
    assert today["per_million_tokens"] == pytest.approx(141.1765, abs=1e-3)
    assert today["vs_reference"] == pytest.approx(282.353, abs=1e-3)
    generation, embedding = today["kinds"]["generation"], today["kinds"]["embedding"]
    assert generation["cost"] == pytest.approx(3.84) and generation["per_million_output"] == pytest.approx(384.0)
    assert generation["per_million_tokens"] == pytest.approx(274.2857, abs=1e-3)
    assert embedding["per_million_tokens"] == pytest.approx(48.0) and embedding["per_million_output"] is None
    assert figures["keys"]["key-a"]["today"]["cost"] == pytest.approx(3.84)
    assert figures["keys"]["key-b"]["today"]["cost"] == pytest.approx(0.96)
    assert figures["models"]["small"]["today"]["kinds"]["generation"]["per_million_output"] == pytest.approx(384.0)
    hour = figures["windows"]["hour"]
    assert hour["billed_s"] == 59 * 60 and hour["cost"] == pytest.approx(2.36)
    assert hour["kinds"]["generation"]["per_million_output"] == pytest.approx(2.36 * 0.8 / 10_000 * 1e6)
    assert figures["windows"]["30d"]["cost"] == pytest.approx(4.80)  # the service is two hours old
    assert figures["break_even_tokens_per_day"] == pytest.approx(2.40 * 24 / 0.50 * 1e6)  # 115.2M tokens a day
    ledger.close()


def test_the_days_survive_a_restart_and_idle_hours_are_priced_in(tmp_path):
    clock = Clock(utc(14, 10))
    ledger = CostLedger(tmp_path / "cost.db", 2.40, clock=clock)
    clock.at(utc(14, 11, 30))
    record_workload(ledger)
    ledger.close()
    clock.at(utc(15, 1))  # restarted the next day at 01:00
    again = CostLedger(tmp_path / "cost.db", 2.40, clock=clock)
    figures = again.summary()
    month = figures["windows"]["30d"]
    assert month["billed_s"] == 15 * 3600 and month["cost"] == pytest.approx(36.0)  # 10:00 yesterday to 01:00
    assert month["kinds"]["generation"]["per_million_output"] == pytest.approx(36.0 * 0.8 / 10_000 * 1e6)
    assert figures["windows"]["today"]["requests"] == 0 and figures["windows"]["today"]["cost"] == pytest.approx(2.40)
    assert figures["windows"]["hour"]["billed_s"] == 0  # the minutes are not kept across a restart
    again.close()


def test_without_a_price_the_work_is_counted_but_not_priced(tmp_path):
    ledger = CostLedger(None, None)
    ledger.record("small", None, "generation", 10, 20, 1.0)
    today = ledger.summary()["windows"]["today"]
    assert today["completion_tokens"] == 20 and today["cost"] is None and today["per_million_output"] is None


def test_a_live_service_exports_its_cost(live_server, client):
    """The live server has no price: the ledger counts; the metric families are there for the dashboards."""
    before = live_server.service.cost.summary(detail=True)["keys"].get(live_server.key_ids["main"], {})
    client.completions.create(model=live_server.model, prompt="cost me", max_tokens=3, extra_body={"ignore_eos": True})
    after = live_server.service.cost.summary(detail=True)
    key = after["keys"][live_server.key_ids["main"]]["today"]
    assert key["completion_tokens"] - before.get("today", {}).get("completion_tokens", 0) == 3
    assert key["busy_s"] > before.get("today", {}).get("busy_s", 0)
    text = httpx.get(live_server.metrics_url, timeout=5).text
    for family in ("appliance_gpu_cost_per_hour", "appliance_cost_per_million_tokens", "appliance_key_cost"):
        assert f"# TYPE {family} gauge" in text
    assert value(scrape(live_server), "appliance_busy_ratio", window="hour") > 0

"""The TUI's pure pieces: number formats, the expiry field, bars and graphs, the snapshot history."""

from datetime import date, datetime, timezone

import pytest

from appliance.control.execution_text import execution
from tui.widgets.panels import kv_text
from tui import format as fmt
from tui.screens.key_forms import comma_list, parse_expiry
from tui.screens.keys import tokens_per_day
from tui.state import ServiceState
from tui.widgets.gauge import bar, level_for
from tui.widgets.history import columns

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, shown", [(None, "—"), (950, "950"), (1843, "1.84k"), (200_000, "200k"),
                                          (50_000_000, "50M"), (3.4e9, "3.4G")])
def test_counts_fit_in_a_few_characters(value, shown):
    assert fmt.count(value) == shown


def test_execution_path_in_a_few_words():
    gpu = {"device": "cuda:0", "dtype": "bfloat16", "attention_backend": "triton", "fused_layers": True, "cuda_graphs": True,
           "async_scheduling": True}
    assert execution(gpu) == "triton · fused · CUDA graphs · async · cuda:0 bfloat16"
    fallback = gpu | {"attention_backend": "torch", "cuda_graphs": False}  # triton failed its warm-up
    assert execution(fallback) == "torch · fused · async · cuda:0 bfloat16"
    assert execution(None) == ""  # no model loaded
    packed = gpu | {"weights": "int4 g32 + bfloat16", "weight_bytes": 3 << 30, "kv_cache_dtype": "float8_e4m3fn"}
    assert execution(packed) == ("triton · fused · CUDA graphs · async · cuda:0 bfloat16 · weights int4 g32 + bfloat16, "
                                 "3.0 GiB · KV fp8")
    cpu = {"device": "cpu", "dtype": "float32", "attention_backend": "torch"}
    assert execution(cpu | {"images": "qwen2_5_vl vision tower"}) == "torch · cpu float32 · takes images"
    assert execution(cpu | {"images": "none"}) == "torch · cpu float32"


def test_the_kv_gauge_counts_state_slots_only_for_a_model_with_recurrent_layers():
    engine = {"kv_usage": 0.25, "kv_blocks_used": 512, "kv_blocks_total": 2048}
    assert kv_text(engine) == "25% 512/2,048 blocks"
    assert kv_text(engine | {"state_slots_used": 3, "state_slots_total": 64}) == "25% 512/2,048 blocks · 3/64 state slots"


def test_sizes_share_the_totals_unit():
    assert fmt.size_pair(12 * 1024**3, 80 * 1024**3) == "12.0/80.0 GiB"
    assert fmt.size_pair(512 * 1024**2, 80 * 1024**3) == "0.5/80.0 GiB"
    assert fmt.size_pair(None, 80 * 1024**3) == "— / 80.0 GiB"


def test_relative_times_use_the_services_clock_and_read_naive_times_as_utc():
    now = NOW.timestamp()
    assert fmt.ago("2026-11-18T11:58:30", now) == "1m 30s ago"
    assert fmt.ago("2026-11-18T11:58:30+00:00", now) == "1m 30s ago"
    assert fmt.ago(None, now) == "never"
    assert fmt.ago(now + 7200, now) == "in 2h 00m"


@pytest.mark.parametrize("text, expected", [
    ("", None), ("never", None), ("30d", "2026-12-18T12:00:00+00:00"), ("12h", "2026-11-19T00:00:00+00:00"),
    ("2026-12-31", "2026-12-31T00:00:00+00:00")])
def test_expiry_field_accepts_days_hours_dates_and_never(text, expected):
    assert parse_expiry(text, NOW) == expected


def test_expiry_field_says_what_it_accepts():
    with pytest.raises(ValueError, match="Expires: enter a number of days"):
        parse_expiry("next week", NOW)


def test_models_field_empty_means_every_model():
    assert comma_list(" ") is None
    assert comma_list("a, b ,") == ["a", "b"]


def test_usage_graph_has_a_column_for_every_day_even_unused_ones():
    days = [{"day": "2026-11-16", "prompt_tokens": 10, "completion_tokens": 5},
            {"day": "2026-11-18", "prompt_tokens": 1, "completion_tokens": 1}]
    assert tokens_per_day(days, date(2026, 11, 18), count=4) == [0, 15, 0, 2]


def test_bar_moves_in_eighths_and_keeps_its_width():
    assert bar(0.5, 10) == ("█████", "░░░░░")
    filled, empty = bar(0.51, 10)
    assert filled == "█████▏" and len(filled + empty) == 10
    assert bar(None, 4) == ("", "░░░░")
    assert bar(1.7, 4) == ("████", "")


def test_gauge_levels_only_where_there_are_thresholds():
    assert level_for(0.99, None, None) == "neutral"  # high GPU utilisation is good news
    assert level_for(0.5, 0.9, 0.98) == "ok"
    assert level_for(0.95, 0.9, 0.98) == "warn"
    assert level_for(0.99, 0.9, 0.98) == "critical"


def test_graph_columns_start_at_zero_show_any_activity_and_leave_gaps():
    assert columns([0, 0.001, 1, None], rows=1, top=1) == [[" "], ["▁"], ["█"], [" "]]
    assert columns([0.75], rows=2, top=1) == [["█", "▄"]]  # bottom row full, top half


def test_history_ignores_a_snapshot_sent_twice_and_series_skip_missing_fields():
    state = ServiceState()
    state.connected([{"time": 1, "engine": {"running": 1}}, {"time": 2, "engine": {"running": 2}}])
    state.add_snapshot({"time": 2, "engine": {"running": 3}})  # the same moment again (a reconnect's first event)
    state.add_snapshot({"time": 3, "engine": {}})
    assert len(state.snapshots) == 3
    assert state.series(lambda s: s["engine"]["running"], 10) == [1, 3, None]
    assert state.series(lambda s: s["engine"]["running"], 2) == [3, None]


def test_the_key_store_line_says_when_the_shared_database_is_unreachable_and_what_the_rule_did():
    from tui.screens.fleet import key_store_text

    up = key_store_text({"location": "postgresql://a:***@db/keys", "shared": True, "reachable": True})
    assert up.plain == "Keys: shared PostgreSQL at postgresql://a:***@db/keys, answering"
    down = key_store_text({"location": "postgresql://a:***@db/keys", "shared": True, "reachable": False,
                           "last_error": "OperationalError: connection refused", "grace_s": 300,
                           "grace_admissions": 12, "refusals": 3})
    assert "UNREACHABLE" in down.plain and "last 300 s keep working (12 let in)" in down.plain
    assert "others get 503 (3 refused)" in down.plain

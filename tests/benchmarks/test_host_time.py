"""The host-time benchmark runs on the tiny model and times every phase of a decode step."""

from benchmarks.host_time import PHASES, measure


def test_every_phase_is_timed_and_alone_runs_no_forward(tiny_model_path):
    in_step = measure(tiny_model_path, batch=2, steps=3, alone=False)
    alone = measure(tiny_model_path, batch=2, steps=3, alone=True)
    assert all(in_step[phase] > 0 for phase in PHASES)
    assert all(alone[phase] > 0 for phase in PHASES if phase != "forward")
    assert alone["forward"] < in_step["forward"]
    assert in_step["outside_forward_ms"] > 0 and alone["outside_forward_ms"] > 0


def test_overlapped_steps_are_timed_too(tiny_model_path):
    for alone in (False, True):
        overlapped = measure(tiny_model_path, batch=2, steps=3, alone=alone, async_scheduling="on")
        assert all(overlapped[phase] > 0 for phase in PHASES if phase != "forward" or not alone)

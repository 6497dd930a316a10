"""Host time per decode step: the engine's work outside the model's forward, at batch 1, 64 and 256.

A tiny random Llama (2 layers, hidden 64) with the default model's real tokenizer (49,152 ids), so
that the forward is small and the detokenizer does real work. Every request is greedy, ignores EOS
and has a 32-token prompt; once all are decoding, each decode step is timed by phase:
  schedule  Scheduler.schedule()
  prepare   BatchPacker (engine.packing): input ids, positions, slots, block tables as tensors
  forward   the model
  sample    the sampler (on CPU its argmax over [batch, vocab] is tensor work, as the forward is)
  advance   appending tokens, detokenizing, stop checks, building the outputs
and the whole step. "in a step" runs the real model; "alone" replays one logits tensor instead of
the forward, so the host phases run without the forward's traffic through the caches.

On a GPU (--device cuda) the phases are host time only (kernels run behind them) and the step is
what the host waits for; --async-scheduling on/off compares the step with the host's work for step
N+1 done while step N runs (engine.overlap) against steps one after the other.

    python -m benchmarks.host_time [--steps 30] [--batches 1 64 256] [--device cuda]
        [--async-scheduling auto|on|off] [--json OUT]
"""

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from appliance.models.default_model import install_default_model
from engine import Engine, EngineConfig, SamplingParams
from tests.conftest import CACHE_DIR, build_tiny_model

PHASES = ("schedule", "prepare", "forward", "sample", "advance")
PROMPT_TOKENS = 32


class TimedSampler:
    """The sampler with both of its entry points timed as "sample" (steps one by one call it, overlapped steps draw)."""

    def __init__(self, sampler, timed):
        self._call = timed("sample", sampler)
        self.draw = timed("sample", sampler.draw)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)


class PhaseTimer:
    """Wraps the engine's phases in place and keeps each call's seconds, per phase."""

    def __init__(self, engine: Engine):
        self.seconds: dict[str, list[float]] = defaultdict(list)
        session, runner = engine.session, engine.session.runner
        for name, owner, attr in (("schedule", session.scheduler, "schedule"), ("prepare", runner.packer, "torch_batch"),
                                  ("prepare", runner.packer, "triton_batch"), ("forward", runner, "forward"),
                                  ("advance", engine, "_advance")):
            setattr(owner, attr, self._timed(name, getattr(owner, attr)))
        session.sampler = TimedSampler(session.sampler, self._timed)

    def _timed(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name].append(time.perf_counter() - start)
        return timed

    def reset(self) -> None:
        self.seconds.clear()

    def per_step_ms(self, steps: int) -> dict[str, float]:
        return {name: 1000 * sum(self.seconds[name]) / steps for name in PHASES}


def measure(model: Path, batch: int, steps: int, alone: bool, device: str = "cpu", async_scheduling: str = "auto") -> dict:
    budget = max(2048, batch * PROMPT_TOKENS)
    engine = Engine(EngineConfig(dtype="float32", max_num_seqs=batch, max_num_batched_tokens=budget, device=device,
                                 async_scheduling=async_scheduling))
    engine.load_model(model)
    for i in range(batch):
        prompt = [1000 + (7 * i + j) % 40000 for j in range(PROMPT_TOKENS)]
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=steps + 8, temperature=0, ignore_eos=True))
    engine.step()  # every prompt in one step
    for _ in range(3):
        engine.step()  # warm-up decodes
    runner = engine.session.runner
    if alone:
        previous = engine.in_flight.token_ids if engine.in_flight is not None else None
        logits = runner.execute(engine.session.scheduler.schedule().scheduled, previous).clone()
        runner.forward = lambda input_ids, positions, meta, keep: logits  # decodes only: every row is kept
    timer = PhaseTimer(engine)
    step_seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        outputs = engine.step()
        step_seconds.append(time.perf_counter() - start)
        assert len(outputs) == batch, "every request decodes every step"
    phases = timer.per_step_ms(steps)
    step_ms = 1000 * statistics.median(step_seconds)
    return {"step_ms": step_ms, **phases, "outside_forward_ms": 1000 * sum(step_seconds) / steps - phases["forward"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 64, 256])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--async-scheduling", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    default_model = install_default_model(CACHE_DIR / "models", CACHE_DIR / "downloads")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_model(Path(folder), default_model)
        header = f"{'batch':>5} {'mode':<10}{'step':>8}" + "".join(f"{p:>10}" for p in PHASES)
        print(header + f"{'outside fwd':>13}  (ms per step)")
        for batch in args.batches:
            for alone in (False, True) if args.device == "cpu" else (False,):  # graph replays skip forward()
                mode = "alone" if alone else "in a step"
                r = results[f"{batch} {mode}"] = measure(model, batch, args.steps, alone, args.device, args.async_scheduling)
                print(f"{batch:>5} {mode:<10}{r['step_ms']:>8.2f}" + "".join(f"{r[p]:>10.2f}" for p in PHASES)
                      + f"{r['outside_forward_ms']:>13.2f}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

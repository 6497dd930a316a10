"""The one prepared GPU check (issue 25): correctness of the CUDA path, then speed, in one run under a budget.

Run by scripts/gpu-check.sh, which installs the carried wheels first. Sections, in order, each
guarded (one that fails or runs out of time is reported, the rest still run; benchmarks/sections.py):
  1. the machine: versions, the device, a device-to-device copy's bandwidth (read + write);
  2. correctness, per shape (benchmarks/gpu_check_correctness.py): the CUDA path against the
     portable path, with fewer layers;
  3. speed, per shape at full size (benchmarks/gpu_check_speed.py): ours (batch-1 tokens/s and MBU,
     64 and 256 requests), then transformers' generate() and its continuous batching (which runs no
     linear-attention layers: not for the hybrid shape);
  4. quantized weights (benchmarks/gpu_check_quantized.py), right after the first shape's speed (or alone,
     `--parts quantized`): that shape in the served dtype, fp8 and int4, weights and KV bytes, tokens/s;
  5. images (benchmarks/gpu_check_images.py), last (or alone, `--parts images`): a Gemma 3 with its real vision
     tower, the CUDA path against the portable one with images, then TTFT and concurrent image requests.
Writes gpu-check.md (to paste into docs/BENCHMARKS.md) and gpu-check.json to --out after every
section, and prints a short table last.

    python3 -m benchmarks.gpu_check [--shapes a,b] [--parts correctness,speed] [--budget-s S] [--out DIR]
    python3 -m benchmarks.gpu_check --dry-run    # the same code on CPU, tiny shapes, seconds
"""

import argparse
import dataclasses
import datetime
import gc
import json
import platform
from pathlib import Path

import torch
import transformers
import triton

from benchmarks.cuda_fast_path import device_name, measure_bandwidth
from benchmarks.gpu_check_correctness import check_shape
from benchmarks.gpu_check_images import check_images, measure_images
from benchmarks.gpu_check_plan import DRY_RUN, GPU, Plan
from benchmarks.gpu_check_quantized import measure_quantized
from benchmarks.gpu_check_report import markdown, summary
from benchmarks.gpu_check_speed import measure_continuous_batching, measure_generate, measure_ours
from benchmarks.model_shapes import SHAPES
from benchmarks.sections import Sections

PARTS = ("correctness", "speed", "quantized", "images")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_machine(plan: Plan, report: dict) -> None:
    device = torch.device(plan.device)
    report["machine"].update(
        device=device_name(device), torch=torch.__version__, triton=triton.__version__,
        transformers=transformers.__version__, python=platform.python_version(),
        cuda=torch.version.cuda, bandwidth_gb_s=measure_bandwidth(device, plan.copy_bytes),
    )


def run(plan: Plan, shapes: list[str], parts: list[str], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "device": plan.device,
                          "torch": torch.__version__, "triton": triton.__version__,
                          "transformers": transformers.__version__, "python": platform.python_version(),
                          "bandwidth_gb_s": 0.0},
              "plan": dataclasses.asdict(plan), "correctness": {}, "speed": {}, "quantized": {}, "images": {},
              "sections": []}

    def save() -> None:
        report["sections"] = sections.as_json()
        (out / "gpu-check.json").write_text(json.dumps(report, indent=2))
        (out / "gpu-check.md").write_text(markdown(report))

    sections = Sections(plan.budget_s, after_each=save, on_free=free_memory)
    caps = plan.caps_s
    if not sections.run("machine", lambda: describe_machine(plan, report)):
        return report  # no bandwidth, no device: nothing below would mean anything
    bandwidth = report["machine"]["bandwidth_gb_s"]
    if "correctness" in parts:
        for name in shapes:
            entry = report["correctness"].setdefault(name, {})
            sections.run(f"correctness {name}", lambda: check_shape(name, plan, entry), caps["correctness"])
    quantized = "quantized" in parts

    def run_quantized() -> None:
        entry = report["quantized"].setdefault(shapes[0], {})
        sections.run(f"quantized {shapes[0]}", lambda: measure_quantized(shapes[0], plan, entry), caps["quantized"])

    if "speed" in parts:
        for name in shapes:
            entry = report["speed"].setdefault(name, {})
            if sections.run(f"ours {name}", lambda: measure_ours(name, plan, bandwidth, entry), caps["ours"]):
                sections.run(f"generate() {name}", lambda: measure_generate(name, plan, entry), caps["generate"])
                if SHAPES[name].transformers_cb:
                    sections.run(f"transformers CB {name}", lambda: measure_continuous_batching(name, plan, entry),
                                 caps["cb"])
            if quantized and name == shapes[0]:
                run_quantized()
    elif quantized:
        run_quantized()
    if "images" in parts:
        images = report["images"]
        sections.run("images correctness", lambda: check_images(plan, images), caps["images"])
        sections.run("images speed", lambda: measure_images(plan, images), caps["images"])
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on CPU with tiny shapes (CI runs this)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, help="the sections' time (default 510 on a GPU, 240 dry)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check-results"), help="where the results go")
    args = parser.parse_args(argv)
    for flag, allowed in (("shapes", SHAPES), ("parts", PARTS)):
        chosen = [x for x in getattr(args, flag).split(",") if x]
        if unknown := set(chosen) - set(allowed):
            parser.error(f"--{flag}: unknown {', '.join(sorted(unknown))}")
        setattr(args, flag, chosen)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    plan = DRY_RUN if args.dry_run else GPU
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    report = run(plan, args.shapes, args.parts, args.out)
    print(f"\nresults: {args.out / 'gpu-check.md'} (markdown for docs/BENCHMARKS.md), {args.out / 'gpu-check.json'}")
    print(summary(report))


if __name__ == "__main__":
    main()

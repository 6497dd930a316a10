"""scripts/gpu-check.sh --dry-run: the GPU check's code end to end on CPU with tiny shapes, so it never rots;
its guarded, budgeted sections; the bytes per token its MBU counts."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen3MoeForCausalLM

from benchmarks.gpu_check_speed import kv_read_per_token, weights_read_per_token
from benchmarks.model_shapes import SHAPES
from benchmarks.sections import Sections

REPO = Path(__file__).resolve().parents[2]
# The shapes the engine loads today. The lead's MoE, sliding-window and multimodal work (issue 25) adds
# the others: then they join this set, and their sections must pass too.
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run([str(REPO / "scripts/gpu-check.sh"), "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((out / "gpu-check.json").read_text()), (out / "gpu-check.md").read_text()


def test_dry_run_runs_every_section_in_order_and_every_shape_passes(dry_run):
    _, report, _ = dry_run
    sections = {s["name"]: s for s in report["sections"]}
    first = next(iter(SHAPES))
    expected = (["machine"] + [f"correctness {name}" for name in SHAPES] + [f"ours {first}", f"quantized {first}"]
                + [f"ours {name}" for name in SHAPES if name != first] + ["images correctness", "images speed"])
    assert [s["name"] for s in report["sections"] if not s["name"].startswith(("generate()", "transformers CB"))] == expected
    for name in SHAPES:
        for section in (f"correctness {name}", f"ours {name}", f"generate() {name}", f"transformers CB {name}"):
            if section in sections or SHAPES[name].transformers_cb:
                assert sections[section]["status"] == "ok", sections[section]
    assert "transformers CB qwen3.6-35b-a3b" not in sections  # its continuous batching has no linear attention


def test_dry_run_checks_the_kernel_path_against_the_portable_path(dry_run):
    _, report, _ = dry_run
    for name in SHAPES:
        entry = report["correctness"][name]
        assert entry["layers"] == SHAPES[name].correctness_layers
        result = entry["float32"]  # the interpreter has no bfloat16 dots: float32 only on CPU
        assert result["execution"]["attention_backend"] == "triton" and result["execution"]["async_scheduling"]
        assert result["agreed"] == result["agreed_async"] == 1.0 and result["divergences_are_near_ties"]
        assert result["logprob_positions"] > result["tokens"]  # prompt positions too
        assert result["logprob_rel_err"] < 1e-4 and result["passed"]


def test_dry_run_measures_ours_and_transformers_on_every_workload(dry_run):
    _, report, _ = dry_run
    assert report["machine"]["bandwidth_gb_s"] > 0
    for name in SHAPES:
        speed = report["speed"][name]
        b1 = speed["batch1"]
        assert b1["ours_tokens_per_s"] > 0 and b1["generate_tokens_per_s"] > 0
        assert b1["mbu"] == pytest.approx((b1["weight_bytes_per_token"] + b1["kv_bytes_per_token"]) * b1["ours_tokens_per_s"]
                                          / (report["machine"]["bandwidth_gb_s"] * 1e9))
        assert set(speed["throughput"]) == {str(n) for n in report["plan"]["workloads"]}
        smallest = str(min(report["plan"]["workloads"]))
        for requests, t in speed["throughput"].items():
            assert t["ours_tokens_per_s"] > 0 and ("cb_tokens_per_s" in t) == SHAPES[name].transformers_cb
            assert t.get("cb_tokens_per_s", 1) > 0
            assert ("generate_tokens_per_s" in t) == (requests == smallest)


def test_dry_run_runs_the_first_shape_int4_against_the_served_dtype_and_says_why_fp8_is_refused_on_cpu(dry_run):
    _, report, md = dry_run
    first = next(iter(SHAPES))
    quantized = report["quantized"][first]
    assert list(quantized) == ["float32", "fp8", "int4"]
    served, int4 = quantized["float32"], quantized["int4"]
    assert "compute capability 8.9" in quantized["fp8"]["refused"]
    assert int4["weights"].startswith("int4 g32") and served["weights"] == "float32"
    assert int4["weight_bytes"] < served["weight_bytes"]
    assert int4["kv_cache_bytes"] == served["kv_cache_bytes"]  # on CPU the plan's fixed KV bytes
    assert int4["batch1_tokens_per_s"] > 0 and int4["throughput_tokens_per_s"] > 0
    assert f"| {first} | fp8 | refused: " in md and f"| {first} | int4 | int4 g32 + float32 |" in md


def test_dry_run_checks_images_on_the_kernel_path_and_measures_a_prefix_cache_hit(dry_run):
    """A Gemma 3 (its image placeholders see each other both ways) with requests of one and two images beside a
    text-only one: the triton path equals the portable path; the same image again is served from the prefix cache."""
    _, report, md = dry_run
    images = report["images"]
    result = images["float32"]
    assert result["execution"]["attention_backend"] == "triton" and result["execution"]["images"] == "gemma3 vision tower"
    assert result["agreed"] == result["agreed_async"] == 1.0 and result["logprob_rel_err"] < 1e-4 and result["passed"]
    assert images["cached_tokens"]["fresh image"] == 0 < images["cached_tokens"]["same image again"]
    assert images["prompt_tokens"] > images["cached_tokens"]["same image again"]
    assert all(t > 0 for t in images["ttft_ms"].values())
    assert images["concurrent"]["image_tokens_per_s"] > 0 and images["concurrent"]["text_tokens_per_s"] > 0
    assert "| gemma3 (tiny, 6 layers): CUDA path vs portable, float32 | 100% / 100% agreed" in md


def test_dry_run_writes_markdown_for_benchmarks_md_and_prints_a_short_table_last(dry_run):
    stdout, report, md = dry_run
    assert md.startswith("### GPU check, ")
    for header in ("| shape | dtype | CUDA path |", "| shape | dtype | ours tok/s |", "| shape | requests |"):
        assert header in md
    for name in SHAPES:
        layers = SHAPES[name].correctness_layers
        recurrent = ", recurrent torch" if not SHAPES[name].transformers_cb else ""  # the hybrid, on CPU
        assert f"| {name} ({layers} layers) | float32 | triton, graphs off, async on{recurrent} | 100% / 100% | yes |" in md
    table = stdout.rstrip().splitlines()[-len(report["sections"]) - 1:]
    assert table[0].split() == ["section", "status", "s", "figures"]
    assert [line.split()[0] for line in table[1:]] == [s["name"].split()[0] for s in report["sections"]]


def test_a_failing_or_overrunning_section_is_reported_and_the_next_still_runs():
    saved = []
    sections = Sections(budget_s=12, reserve_s=1, min_s=1, after_each=lambda: saved.append(len(sections.records)),
                        on_free=lambda: None)

    def fails():
        raise ValueError("no such layer")

    assert not sections.run("fails", fails)
    assert not sections.run("overruns", lambda: time.sleep(30), cap_s=0.5)
    assert sections.run("runs", lambda: None)
    sections.deadline = time.monotonic()  # the budget spent
    assert not sections.run("too late", lambda: None)
    assert [(r.name, r.status) for r in sections.records] == [
        ("fails", "failed"), ("overruns", "timed out"), ("runs", "ok"), ("too late", "skipped")]
    assert sections.records[0].error == "ValueError: no such layer"
    assert 0.4 < sections.records[1].seconds < 5
    assert saved == [1, 2, 3, 4]  # the results are saved after every section


def test_mbu_counts_only_the_routed_experts_and_a_sliding_layers_window():
    config = SHAPES["qwen3-30b-a3b"].config(tiny=True)  # 4 experts, 2 a token; untied embeddings
    model = Qwen3MoeForCausalLM(config)
    h, moe, vocab, layers = config.hidden_size, config.moe_intermediate_size, config.vocab_size, config.num_hidden_layers
    experts_per_layer = 4 * (2 * moe * h + h * moe)  # gate_up_proj and down_proj of each expert
    everything = sum(p.numel() for p in model.parameters())
    assert weights_read_per_token(model, config) == 4 * (everything - vocab * h - layers * experts_per_layer // 2)

    gpt_oss = SHAPES["gpt-oss-20b"].config(tiny=True)  # a sliding layer (window 8) and a full one
    per_layer_token = 2 * 2 * 16 * 4  # keys and values, 2 kv heads of 16 dims, float32
    # Decode contexts 17..23: the full layer reads 20 on average, the sliding one 8.
    assert kv_read_per_token(gpt_oss, torch.float32, 16, 8) == per_layer_token * (20 + 8)

"""The GPU fast-path benchmark (issue 7) runs end to end on CPU with the tiny shape and reports every figure."""

import json

import pytest

from benchmarks.cuda_fast_path import parse_args, run
from benchmarks.throughput import make_workload


def test_cpu_smoke_run_reports_every_figure_and_ours_makes_exactly_the_requested_tokens(tmp_path):
    out = tmp_path / "report.json"
    args = parse_args([
        "--device", "cpu", "--models", "tiny", "--num-requests", "6", "--min-len", "8", "--max-len", "24",
        "--prompt-tokens", "16", "--decode-tokens", "8", "--rounds", "1", "--generate-requests", "4",
        "--kv-cache-gib", "0.01", "--copy-gib", "0.01", "--json", str(out),
    ])
    report = run(args)

    assert json.loads(out.read_text()) == report
    assert report["device"]["name"] and report["device"]["bandwidth_gb_s"] > 0
    tiny = report["models"]["tiny"]
    # The tiny shape ties its embedding: it is the LM head, read every token, so both counts agree.
    assert tiny["weight_bytes"] == tiny["weight_bytes_without_embedding_table"] > 0
    assert 0 < tiny["kv_cache_bytes"] <= 0.01 * 2**30
    assert (tiny["attention_backend"], tiny["fused_layers"], tiny["cuda_graphs"]) == ("torch", False, False)  # CPU

    b1 = tiny["batch1"]
    assert b1["mean_context_tokens"] == 16 + 8 / 2
    assert b1["kv_bytes_per_decode_token"] == tiny["kv_bytes_per_context_token"] * b1["mean_context_tokens"]
    assert b1["mbu"] == pytest.approx(
        (tiny["weight_bytes"] + b1["kv_bytes_per_decode_token"]) * b1["ours_tokens_per_s"]
        / (report["device"]["bandwidth_gb_s"] * 1e9)
    )
    for key in ("ours_tokens_per_s", "mbu", "generate_tokens_per_s", "ours_over_generate"):
        assert b1[key] > 0, key

    workload = make_workload(6, 1024, 0, (8, 24), (8, 24))
    mixed = tiny["mixed"]
    assert mixed["output_tokens"] == sum(r.output_len for r in workload)
    assert mixed["ours"]["output_tokens"] == mixed["output_tokens"]
    assert mixed["cb"]["output_tokens"] == mixed["output_tokens"]
    assert mixed["generate"]["num_requests"] == 4
    assert mixed["generate"]["output_tokens"] == sum(r.output_len for r in workload[:4])
    for key in ("ours", "cb", "generate"):
        assert mixed[key]["seconds"] > 0 and mixed[key]["tokens_per_s"] > 0, key
    assert mixed["ours_over_cb"] > 0 and mixed["ours_over_generate"] > 0
    assert [t["what"] for t in report["targets"]] == ["tiny mixed ours / transformers CB"]

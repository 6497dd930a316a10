"""The GPU check's results as markdown for docs/BENCHMARKS.md, and the short table printed last."""


def _fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _ratio(ours, theirs) -> str:
    return "–" if ours is None or not theirs else f"{ours / theirs:.2f}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def correctness_rows(report: dict) -> list[str]:
    rows = []
    for name, entry in report["correctness"].items():
        for dtype in report["plan"]["correctness_dtypes"]:
            r = entry.get(dtype)
            if r is None:
                continue
            e = r["execution"]
            path = f"{e['attention_backend']}, graphs {_on(e['cuda_graphs'])}, async {_on(e['async_scheduling'])}"
            if e.get("recurrent", "none") != "none":
                path += f", recurrent {e['recurrent']}"
            rows.append(f"| {name} ({entry['layers']} layers) | {dtype} | {path} "
                        f"| {r['agreed']:.0%} / {r['agreed_async']:.0%} | {'yes' if r['divergences_are_near_ties'] else 'NO'} "
                        f"| {r['logprob_rel_err']:.1e} | {'pass' if r['passed'] else 'FAIL'} |")
    return rows


def speed_rows(report: dict) -> tuple[list[str], list[str]]:
    batch1, throughput = [], []
    for name, entry in report["speed"].items():
        b1 = entry.get("batch1")
        if b1:
            ours, theirs = b1["ours_tokens_per_s"], b1.get("generate_tokens_per_s")
            gb_per_token = (b1["weight_bytes_per_token"] + b1["kv_bytes_per_token"]) / 1e9
            batch1.append(f"| {name} | {entry['dtype']} | {ours:.1f} | {_fmt(theirs)} | {_ratio(ours, theirs)} "
                          f"| {gb_per_token:.2f} | {b1['mbu']:.2f} |")
        for requests, t in entry.get("throughput", {}).items():
            ours, cb, gen = t["ours_tokens_per_s"], t.get("cb_tokens_per_s"), t.get("generate_tokens_per_s")
            throughput.append(f"| {name} | {requests} | {t['output_tokens']} | {ours:.0f} | {_fmt(cb, '.0f')} "
                              f"| {_fmt(gen, '.0f')} | {_ratio(ours, cb)} | {_ratio(ours, gen)} |")
    return batch1, throughput


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def quantized_rows(report: dict) -> list[str]:
    """One row per way the quantized shape ran (the served dtype first: the ratios are against it)."""
    rows = []
    for name, entry in report.get("quantized", {}).items():
        base = next(iter(entry.values()), {})
        for label, r in entry.items():
            if "refused" in r:
                rows.append(f"| {name} | {label} | refused: {r['refused']} | | | | |")
                continue
            ratio = {k: f" ({_ratio(r[k], base.get(k))}x)" if r is not base else "" for k in
                     ("weight_bytes", "kv_cache_bytes", "batch1_tokens_per_s", "throughput_tokens_per_s")}
            rows.append(f"| {name} | {label} | {r['weights']} | {_size(r['weight_bytes'])}{ratio['weight_bytes']} "
                        f"| {_size(r['kv_cache_bytes'])}{ratio['kv_cache_bytes']} "
                        f"| {r['batch1_tokens_per_s']:.1f}{ratio['batch1_tokens_per_s']} "
                        f"| {r['throughput_tokens_per_s']:.0f}{ratio['throughput_tokens_per_s']} |")
    return rows


def images_rows(report: dict) -> list[str]:
    """The image model's correctness per dtype, then its TTFT and concurrent figures."""
    entry, rows = report.get("images", {}), []
    for dtype in report["plan"]["correctness_dtypes"]:
        r = entry.get(dtype)
        if r is not None:
            rows.append(f"| {entry['model']}: CUDA path vs portable, {dtype} | {r['agreed']:.0%} / {r['agreed_async']:.0%} "
                        f"agreed, near ties {'yes' if r['divergences_are_near_ties'] else 'NO'}, logprob rel. err. "
                        f"{r['logprob_rel_err']:.1e} | {'pass' if r['passed'] else 'FAIL'} |")
    ttft = entry.get("ttft_ms")
    if ttft:
        fresh, again, text = ttft["fresh image"], ttft["same image again"], ttft["text as long"]
        rows.append(f"| TTFT, {entry['prompt_tokens']}-token prompt with an image: fresh / same image again "
                    f"({entry['cached_tokens']['same image again']} tokens cached) / text as long | {fresh:.1f} / "
                    f"{again:.1f} / {text:.1f} ms | fresh / again {_ratio(fresh, again)}, fresh / text {_ratio(fresh, text)} |")
        c = entry["concurrent"]
        rows.append(f"| {c['requests']} concurrent requests, {c['output_len']} tokens each: with an image each / text "
                    f"as long | {c['image_tokens_per_s']:.0f} / {c['text_tokens_per_s']:.0f} tok/s | "
                    f"{_ratio(c['image_tokens_per_s'], c['text_tokens_per_s'])} |")
    return rows


def markdown(report: dict) -> str:
    m, plan = report["machine"], report["plan"]
    lines = [
        f"### GPU check, {m['date']}: {m['device']}",
        "",
        f"`scripts/gpu-check.sh{' --dry-run' if plan['tiny'] else ''}` — {m['device']}, torch {m['torch']}, "
        f"triton {m['triton']}, transformers {m['transformers']}, Python {m['python']}; device-to-device copy "
        f"{m['bandwidth_gb_s']:.0f} GB/s (read + write). Random weights (load_dummy's seed), shapes from the "
        "published configs (benchmarks/model_shapes.py).",
        "",
        f"**Correctness**: the CUDA path against the portable torch path, {', '.join(str(n) for n in plan['correctness_prompt_lens'])}-token "
        f"prompts, two sharing a {plan['correctness_shared_prefix']}-token prefix and one past any sliding window, "
        f"{plan['correctness_output_len']} greedy tokens each, prefill chunks of {plan['correctness_batched_tokens']} tokens; "
        "fewer layers than the models, every kind of layer each has. Tokens agreed before a first difference (with "
        "logprobs / async scheduling); a difference must be a near tie (each path's token in the other's top 5); "
        "relative error of the log-probabilities at every shared position.",
        "",
        "| shape | dtype | CUDA path | tokens agreed | near ties | logprob rel. err. | verdict |",
        "|---|---|---|---:|---|---:|---|",
        *correctness_rows(report),
    ]
    batch1, throughput = speed_rows(report)
    lines += [
        "",
        f"**Batch-1 decode** ({plan['batch1_prompt_len']}-token prompt, {plan['batch1_output_len']} tokens, ours the median "
        f"of {plan['batch1_rounds']} rounds; MBU = bytes per token x tokens/s / copy bandwidth, bytes per token = weights "
        "read (experts routed to only, no untied embedding table) + KV attended):",
        "",
        "| shape | dtype | ours tok/s | generate() tok/s | ours / generate() | GB per token | MBU |",
        "|---|---|---:|---:|---:|---:|---:|",
        *batch1,
        "",
        f"**Throughput** (prompts uniform in {plan['prompt_range'][0]}–{plan['prompt_range'][1]} tokens, outputs in "
        f"{plan['output_range'][0]}–{plan['output_range'][1]}, EOS ignored, seed 0, all submitted at once; generate() in "
        f"static batches of {plan['generate_batch_size']} on the smallest workload, which is the larger's first requests):",
        "",
        "| shape | requests | output tokens | ours tok/s | transformers CB tok/s | generate() tok/s | ours / CB | ours / generate() |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *throughput,
        "",
        "**Quantized weights** (quantized at load from the same random weights; the KV cache sized into the memory "
        "the weights leave; batch-1 as above; throughput on the smallest workload; ratios against the first row):",
        "",
        "| shape | run | weights | weight bytes | KV cache | batch-1 tok/s | throughput tok/s |",
        "|---|---|---|---:|---:|---:|---:|",
        *quantized_rows(report),
        "",
        "**Images** (benchmarks/gpu_check_images.py: on a GPU Gemma 3's SigLIP so400m at 896 x 896, 256 placeholders "
        "that see each other both ways, under six layers of Gemma-3-12B's shape, tiny in a dry run; random weights; "
        "TTFT the median of "
        f"{plan['batch1_rounds']} rounds after one to warm up):",
        "",
        "| what | figures | verdict / ratio |",
        "|---|---|---|",
        *images_rows(report),
        "",
        "Sections:",
        "",
        *[f"- {s['name']}: {s['status']}, {s['seconds']:.0f} s" + (f" — {s['error']}" if s["error"] else "")
          for s in report["sections"]],
    ]
    return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
    """The short table printed last: one line a section, with its headline figure."""
    figures = {}
    for name, entry in report["correctness"].items():
        for dtype in report["plan"]["correctness_dtypes"]:
            if dtype in entry:
                r = entry[dtype]
                figures[f"correctness {name}"] = figures.get(f"correctness {name}", "") + (
                    f"{dtype} {'pass' if r['passed'] else 'FAIL'} (rel {r['logprob_rel_err']:.0e}) ")
    for name, entry in report["speed"].items():
        b1, throughput = entry.get("batch1", {}), entry.get("throughput", {})
        if b1:
            figures[f"ours {name}"] = f"b1 {b1['ours_tokens_per_s']:.0f} tok/s, MBU {b1['mbu']:.2f}; " + ", ".join(
                f"{n} req {t['ours_tokens_per_s']:.0f} tok/s" for n, t in throughput.items())
        if "generate_tokens_per_s" in b1:
            smallest = throughput[min(throughput, key=int)]
            figures[f"generate() {name}"] = (
                f"ours / generate(): b1 {_ratio(b1['ours_tokens_per_s'], b1['generate_tokens_per_s'])}, "
                f"throughput {_ratio(smallest['ours_tokens_per_s'], smallest.get('generate_tokens_per_s'))}")
        figures[f"transformers CB {name}"] = "ours / CB: " + ", ".join(
            f"{n} req {_ratio(t['ours_tokens_per_s'], t['cb_tokens_per_s'])}"
            for n, t in throughput.items() if "cb_tokens_per_s" in t)
    for name, entry in report.get("quantized", {}).items():
        base = next(iter(entry.values()), {})
        figures[f"quantized {name}"] = ", ".join(
            f"{label} refused" if "refused" in r else
            f"{label} b1 {r['batch1_tokens_per_s']:.0f} tok/s ({_ratio(r['batch1_tokens_per_s'], base.get('batch1_tokens_per_s'))}x)"
            for label, r in entry.items())
    images = report.get("images", {})
    figures["images correctness"] = " ".join(f"{d} {'pass' if images[d]['passed'] else 'FAIL'}"
                                             for d in report["plan"]["correctness_dtypes"] if d in images)
    if "ttft_ms" in images:
        ttft, c = images["ttft_ms"], images["concurrent"]
        figures["images speed"] = (f"TTFT fresh {ttft['fresh image']:.0f} ms, again {ttft['same image again']:.0f} ms, "
                                   f"text {ttft['text as long']:.0f} ms; {c['requests']} req "
                                   f"{c['image_tokens_per_s']:.0f} vs {c['text_tokens_per_s']:.0f} tok/s")
    lines = [f"{'section':<36} {'status':<10} {'s':>5}  figures"]
    for s in report["sections"]:
        figure = figures.get(s["name"], "") if s["status"] == "ok" else (s["error"] or "")
        lines.append(f"{s['name']:<36} {s['status']:<10} {s['seconds']:>5.0f}  {figure[:110]}")
    return "\n".join(lines)

"""The model pool: time to first token of a request that loads its model on demand, and two resident
models under load together vs each alone, in one run.

`appliance serve` runs as its own process with two copies of the default model in its store
(smol-a loaded at start, smol-b on demand). First one streamed request to each: smol-a warm, then
smol-b, whose request waits for its load (and canary). Then the `appliance bench` workload on
smol-a alone, smol-b alone, and both at once (the same workload to each): output tokens/s, and
together / mean alone. Two engines share the machine's cores (or GPU), so the sum together is the
figure to compare with one alone.

    python -m benchmarks.model_pool [--model PATH] [--num-prompts 16]
"""

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx

from appliance.cli.bench import BenchConfig, run_benchmark, send_request, make_workload
from appliance.keys import KeyStore
from appliance.models.store import write_manifest
from benchmarks.http_vs_engine import free_port, start_server


def store_copy(models_dir: Path, source: Path, name: str) -> None:
    """The model under another name, its files linked, not copied."""
    folder = models_dir / name
    folder.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.name != "manifest.json":
            (folder / file.name).symlink_to(file.resolve())
    write_manifest(folder, name, source="local:benchmark", revision=None)


async def first_token_s(config: BenchConfig, model: str) -> float:
    prompt = make_workload(BenchConfig(num_prompts=1, input_len=(64, 64), output_len=(8, 8), seed=1))[0]
    async with httpx.AsyncClient(base_url=config.base_url, timeout=600,
                                 headers={"Authorization": f"Bearer {config.api_key}"}) as client:
        result = await send_request(client, config, model, prompt)
    if not result.ok:
        raise SystemExit(f"the request to {model} failed: {result.error}")
    return result.ttft_s


async def throughput(config: BenchConfig, *models: str) -> list[float]:
    results = await asyncio.gather(*(run_benchmark(BenchConfig(**{**vars(config), "model": m})) for m in models))
    for result in results:
        if result.failed:
            raise SystemExit(f"{result.failed} requests failed: {result.errors}")
    return [r.output_throughput for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache/appliance-tests/models/smollm2-135m-instruct"))
    parser.add_argument("--num-prompts", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        for name in ("smol-a", "smol-b"):
            store_copy(state / "models", Path(args.model), name)
        (state / "config.toml").write_text("load_on_demand = true\n")
        store = KeyStore(state / "keys.db")
        _, key = store.create("bench")
        store.close()
        port = free_port()
        server = start_server("smol-a", state, port, "--config", str(state / "config.toml"), "--no-tls")
        config = BenchConfig(base_url=f"http://127.0.0.1:{port}", api_key=key, num_prompts=args.num_prompts,
                             input_len=(32, 256), output_len=(16, 128))
        try:
            warm = asyncio.run(first_token_s(config, "smol-a"))
            started = time.perf_counter()
            cold = asyncio.run(first_token_s(config, "smol-b"))
            print(f"{os.cpu_count()} cores; default model twice (smol-a resident, smol-b on demand)")
            print(f"TTFT resident {warm * 1000:.0f} ms; TTFT loading on demand {cold * 1000:.0f} ms "
                  f"(the request's wall time {time.perf_counter() - started:.1f} s)")
            alone_a, = asyncio.run(throughput(config, "smol-a"))
            alone_b, = asyncio.run(throughput(config, "smol-b"))
            together = asyncio.run(throughput(config, "smol-a", "smol-b"))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    mean_alone = (alone_a + alone_b) / 2
    print(f"workload per model: {args.num_prompts} prompts, input {config.input_len} words, output {config.output_len} tokens")
    print(f"alone: smol-a {alone_a:.1f}, smol-b {alone_b:.1f} output tok/s; together: "
          f"{together[0]:.1f} + {together[1]:.1f} = {sum(together):.1f} tok/s; "
          f"together / mean alone = {sum(together) / mean_alone:.2f}")


if __name__ == "__main__":
    main()

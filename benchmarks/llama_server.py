"""Upstream llama.cpp as the peer in a benchmark: its llama-server on a GGUF, driven over HTTP.

llama.cpp is built from the source distribution of llama-cpp-python 0.3.36 (pinned: the llama.cpp it
vendors), with cmake into .llama.cpp/ (git ignores it; nothing of it is committed), native to this CPU:

    .venv/bin/pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d .llama.cpp
    tar xzf .llama.cpp/llama_cpp_python-0.3.36.tar.gz -C .llama.cpp
    cmake -S .llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp -B .llama.cpp/build -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \\
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
    cmake --build .llama.cpp/build -j2 --target llama-server      # ~25 min on 2 busy cores

(LLAMA_USE_PREBUILT_UI=OFF: the server's web page would otherwise be downloaded at build time.)

What is measured, as our engine's figures are: batch-1 decode from llama.cpp's own timings of one
request (generated tokens over the time spent generating them, the prompt's evaluation excluded), and a
workload of concurrent requests as output tokens over the wall time from the first request sent to the
last answer, every request in its own slot of llama-server's continuous batching.
"""

import json
import socket
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

BINARY = Path(__file__).resolve().parent.parent / ".llama.cpp" / "build" / "bin" / "llama-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def complete(self, prompt: list[int], n: int) -> dict:
        """One greedy completion of n tokens (EOS ignored); llama-server's answer, with its `timings`."""
        body = {"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
        request = urllib.request.Request(self.url + "/completion", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.load(response)
        assert answer["timings"]["predicted_n"] == n, answer["timings"]
        return answer

    def decode_rate(self, prompt: list[int], n: int) -> float:
        """Batch-1 decode tokens/s of one request, by llama.cpp's own clock."""
        return self.complete(prompt, n)["timings"]["predicted_per_second"]

    def workload_rate(self, requests: list[tuple[list[int], int]]) -> float:
        """Output tokens/s of (prompt, output length) requests sent all at once."""
        start = time.perf_counter()
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda r: self.complete(*r), requests))
        seconds = time.perf_counter() - start
        return sum(a["timings"]["predicted_n"] for a in answers) / seconds


@contextmanager
def llama_server(gguf: Path, threads: int, slots: int, context_per_slot: int, binary: Path = BINARY):
    """llama-server on `gguf`, CPU only, `slots` parallel sequences of `context_per_slot` tokens each."""
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: build llama.cpp as benchmarks/llama_server.py's docstring says")
    port = _free_port()
    command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
               "-tb", str(threads), "-np", str(slots), "-c", str(slots * context_per_slot), "-ngl", "0",
               "--no-webui"]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        server = LlamaServer(port)
        try:
            deadline = time.monotonic() + 120
            while not _healthy(server):
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"llama-server exited: {log.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("llama-server did not become healthy in 120 s")
                time.sleep(0.2)
            yield server
        finally:
            process.terminate()
            process.wait(30)


def _healthy(server: LlamaServer) -> bool:
    try:
        with urllib.request.urlopen(server.url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False

"""What the GPU check runs: sizes and time caps on one H100, and the same code tiny on CPU (--dry-run).

Three ways to run a model in the check, each an EngineConfig:
- the CUDA path: triton attention, fused layers, CUDA graphs, async scheduling (on CPU, for the dry
  run, the same kernels in Triton's interpreter, without graphs);
- the portable path: torch attention (SDPA over gathered blocks), steps one by one;
- served: the engine's defaults (on the GPU dtype auto, the KV cache from gpu_memory_fraction), for speed.
"""

from dataclasses import dataclass

from benchmarks.throughput import WORKLOADS
from engine import EngineConfig

MIB = 1 << 20


@dataclass(frozen=True)
class Plan:
    device: str
    tiny: bool  # the shapes' tiny configs
    budget_s: float  # the whole run, results written included
    correctness_dtypes: tuple[str, ...]
    correctness_prompt_lens: tuple[int, ...]  # plus a pair sharing a prefix, and one past any sliding window
    correctness_shared_prefix: int
    correctness_output_len: int
    correctness_batched_tokens: int  # small: long prompts are prefilled in chunks
    correctness_kv_bytes: int
    batch1_prompt_len: int
    batch1_output_len: int
    batch1_rounds: int
    workloads: tuple[int, ...]  # requests in each throughput workload, prompts and outputs as below
    prompt_range: tuple[int, int]
    output_range: tuple[int, int]
    generate_batch_size: int  # generate()'s static batches, run on the smallest workload only
    served_dtype: str
    served_kv_bytes: int | None  # None: the engine's own sizing (gpu_memory_fraction)
    copy_bytes: int  # the bandwidth copy
    caps_s: dict  # each kind of section's longest run

    def fast_path(self, dtype: str) -> EngineConfig:
        return EngineConfig(device=self.device, dtype=dtype, attention_backend="triton", fused_layers=True,
                            cuda_graphs=True, async_scheduling="on", max_num_seqs=16,
                            max_num_batched_tokens=self.correctness_batched_tokens,
                            kv_cache_bytes=self.correctness_kv_bytes)

    def portable_path(self, dtype: str) -> EngineConfig:
        return EngineConfig(device=self.device, dtype=dtype, attention_backend="torch", cuda_graphs=False,
                            async_scheduling="off", max_num_seqs=16,
                            max_num_batched_tokens=self.correctness_batched_tokens,
                            kv_cache_bytes=self.correctness_kv_bytes)

    def served(self) -> EngineConfig:
        return EngineConfig(device=self.device, dtype=self.served_dtype, kv_cache_bytes=self.served_kv_bytes)


_, MIXED_PROMPTS, MIXED_OUTPUTS = WORKLOADS["mixed64"]

# One H100 within one device command (10 minutes), wheels installed included. Sections run in order until
# the budget is spent: correctness of every shape first, then each shape's speed, Llama's first.
GPU = Plan(
    device="cuda", tiny=False, budget_s=510.0,
    correctness_dtypes=("float32", "bfloat16"), correctness_prompt_lens=(5, 24, 130, 300, 700),
    correctness_shared_prefix=64, correctness_output_len=16, correctness_batched_tokens=256,
    correctness_kv_bytes=1024 * MIB,
    batch1_prompt_len=128, batch1_output_len=256, batch1_rounds=3,
    workloads=(64, 256), prompt_range=MIXED_PROMPTS, output_range=MIXED_OUTPUTS, generate_batch_size=16,
    served_dtype="auto", served_kv_bytes=None, copy_bytes=1 << 30,
    # the first shape compiles the kernels; quantized: three loads of the shape (bf16, fp8, int4) and their runs
    caps_s={"correctness": 150, "ours": 150, "generate": 100, "cb": 150, "quantized": 240, "images": 150},
)

# The same code on CPU in seconds (CI): tiny shapes, float32 only (the interpreter has no bfloat16 dots,
# and bfloat16 is emulated on CPUs without it), few steps (each takes a second in the interpreter).
DRY_RUN = Plan(
    device="cpu", tiny=True, budget_s=900.0,  # generous: on a loaded CI machine the four shapes take minutes
    correctness_dtypes=("float32",), correctness_prompt_lens=(3, 20),
    correctness_shared_prefix=8, correctness_output_len=3, correctness_batched_tokens=24,
    correctness_kv_bytes=4 * MIB,
    batch1_prompt_len=16, batch1_output_len=8, batch1_rounds=1,
    workloads=(4, 8), prompt_range=(8, 24), output_range=(4, 12), generate_batch_size=4,
    served_dtype="float32", served_kv_bytes=8 * MIB, copy_bytes=16 * MIB,
    caps_s={"correctness": 60, "ours": 60, "generate": 60, "cb": 60, "quantized": 120, "images": 120},
)

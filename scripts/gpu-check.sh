#!/usr/bin/env bash
# gpu-check.sh -- the one prepared GPU check (issue 25): on one GPU, in one run, with no network.
#
#   scripts/gpu-check.sh --fetch-wheels   where there is network: the wheels the GPU machine lacks into .whl/
#   scripts/gpu-check.sh [ARGS]           on the GPU machine: installs .whl/ (into $GPU_CHECK_SITE, default
#                                         /tmp/appliance-gpu-check-site), then runs the check
#   scripts/gpu-check.sh --dry-run        the same code on CPU with tiny shapes, in seconds (CI runs it)
#
# The check (benchmarks/gpu_check.py): the CUDA path (triton attention, fused layers, CUDA graphs, async
# scheduling; fla's kernels for Gated DeltaNet) against the portable torch path on random weights at the
# per-layer shapes of Llama-3.1-8B, Qwen3-30B-A3B, gpt-oss-20b, Gemma-3-12B and the hybrid Qwen3.6-35B-A3B
# (fewer layers): greedy tokens and log-probabilities; then at full size (Qwen3.6: 20 of its 40 layers)
# batch-1 decode tokens/s and memory-bandwidth utilisation, and 64- and 256-request throughput against
# transformers' generate() and its continuous batching (not for the hybrid), in the same run; and Llama-3.1-8B
# quantized at load to fp8 and int4 against bf16 (weights and KV bytes, tokens/s; `--parts quantized` runs it alone); last,
# images: a Gemma 3 with its real vision tower on the CUDA path against the portable one, TTFT with and without a
# prefix-cache hit, concurrent image requests (`--parts images` alone). Every section is guarded
# and the run keeps to a time budget (--budget-s, default 510 s: one device command of at most 10 minutes,
# wheels installed included). Results: gpu-check.md (to paste into docs/BENCHMARKS.md) and gpu-check.json
# in $OUT if set, else ./gpu-check-results; a short table is printed last.
#
# ARGS go to benchmarks/gpu_check.py: --shapes llama-3.1-8b,... --parts correctness,speed,quantized --budget-s S.
# A machine without a GPU runs --dry-run only.
#
# The GPU machine has its own torch, triton, tokenizers, safetensors and huggingface_hub but an older
# transformers and no xgrammar or pydantic; the wheels of CARRIED below, at the versions requirements.lock
# pins, for CPython 3.12 on x86-64 Linux, travel in .whl/ (ignored by git: carry it, e.g. the device
# tool's `carry: [".whl"]`). --fetch-wheels replaces .whl/'s contents.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=$REPO/.whl
SITE=${GPU_CHECK_SITE:-/tmp/appliance-gpu-check-site}
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-$REPO/gpu-check-results}
# What the engine imports beyond the GPU machine's packages, and what those need that it lacks; fla-core (and its
# einops) runs the hybrid shape's Gated DeltaNet layers (requirements-cuda.lock: GPU machines only); gguf:
# engine.quantization reads GGUF tensor types at import; torchao: the quantized run's int4 (and int8) math; pillow:
# the images section's pictures and the family's PIL image processor.
CARRIED="transformers xgrammar apache-tvm-ffi pydantic pydantic_core annotated-types typing-inspection typing_extensions regex
fla-core einops gguf torchao pillow"
PLATFORMS="manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64"

normalised() {  # a distribution name as pip compares them: case, '-', '_' and '.' alike
  echo "$1" | tr 'A-Z_.' 'a-z--'
}

pinned() {  # NAME -> NAME==VERSION, as requirements.lock (or requirements-cuda.lock) pins it
  local want line
  want=$(normalised "$1")
  while IFS= read -r line; do
    [[ $line == *==* ]] || continue
    if [[ $(normalised "${line%%==*}") == "$want" ]]; then
      echo "${line%%[ ;#]*}"
      return
    fi
  done < <(cat "$REPO/requirements.lock" "$REPO/requirements-cuda.lock")
  echo "gpu-check: $1 is not pinned in requirements.lock or requirements-cuda.lock" >&2
  return 1
}

fetch_wheels() {
  local specs=() platforms=() name platform
  for name in $CARRIED; do specs+=("$(pinned "$name")"); done
  for platform in $PLATFORMS; do platforms+=(--platform "$platform"); done
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "${specs[@]}"
  echo "gpu-check: $(find "$WHEELS" -type f -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1), in $WHEELS:"
  ls "$WHEELS"
}

install_wheels() {
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    if "$PYTHON" -c "import transformers, xgrammar; assert transformers.__version__ == '$(pinned transformers | cut -d= -f3)'" 2>/dev/null; then
      return  # this Python has what the engine needs already
    fi
    echo "gpu-check: $PYTHON lacks what the engine needs and $WHEELS holds no wheels; run" \
      "scripts/gpu-check.sh --fetch-wheels where there is network, and bring .whl along" >&2
    return 1
  fi
  echo "gpu-check: installing $(find "$WHEELS" -type f -name '*.whl' | wc -l) carried wheels into $SITE"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

run_check() {
  cd "$REPO"
  PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m benchmarks.gpu_check --out "$RESULTS" "$@"
}

main() {
  case "${1:-}" in
    --fetch-wheels) fetch_wheels ;;
    --dry-run)
      # Triton's interpreter runs the kernels on CPU; it is chosen when triton is first imported.
      export TRITON_INTERPRET=1
      run_check "$@"
      ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *)
      install_wheels
      run_check "$@"
      ;;
  esac
}

main "$@"

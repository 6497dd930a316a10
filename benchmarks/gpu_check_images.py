"""Images on the CUDA path (issue 30): a Gemma 3 with its real vision tower, random weights, in the GPU check.

The model: Gemma 3's SigLIP so400m at 896 x 896 (4,096 patches pooled to 256 placeholders, which attend to
each other both ways: the triton kernel's last key per query) under a language model of Gemma-3-12B's
per-layer shape with six layers (five sliding, one full); tiny of the same classes for the dry run. Saved
to a folder with a word-level tokenizer built here (the image tokens among its specials) and the family's
processor, as a checkpoint is (nothing is downloaded); the vision weights drawn loud enough that an image
decides the next tokens (tests/engine/vision_models.louder).

Correctness: requests with one and two images, batched with a text-only one, on the CUDA path against the
portable path (benchmarks/gpu_check_correctness.compare: greedy tokens, near ties, log-probabilities).
Speed, served as the appliance serves it: time to the first token of an image request (a new image each
round), of the same request again (its image's blocks from the prefix cache, not encoded), and of a text
request as long; then concurrent image requests against as many text requests as long (tokens/s).
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, PreTrainedTokenizerFast, SiglipVisionConfig
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from benchmarks.gpu_check_correctness import LOGPROB_REL_ERR_LIMIT, add_prompt, compare, run_engine_paths
from benchmarks.gpu_check_plan import Plan
from benchmarks.model_shapes import SHAPES
from engine import Engine, SamplingParams
from tests.engine.vision_models import louder

WORDS = 1000
IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", *IMAGE_TOKENS.values()]
SO400M_896 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                  image_size=896, patch_size=14)
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Words w0..w999 split on spaces, and the specials (the image tokens recognised anywhere in the text)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + [f"w{i}" for i in range(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", extra_special_tokens=IMAGE_TOKENS)


def build_gemma3(plan: Plan, target: Path) -> Path:
    tokenizer = word_tokenizer()
    text = SHAPES["gemma-3-12b"].config(tiny=plan.tiny, layers=SHAPES["gemma-3-12b"].correctness_layers)
    text.vocab_size = len(tokenizer)
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (tokenizer.convert_tokens_to_ids(t)
                                                               for t in ("<bos>", "<eos>", "<pad>"))
    tower = SiglipVisionConfig(**(TINY_TOWER if plan.tiny else SO400M_896))
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in IMAGE_TOKENS.items()}
    config = Gemma3Config(text_config=text.to_dict(), vision_config=tower.to_dict(),
                          mm_tokens_per_image=4 if plan.tiny else 256, image_token_index=ids["image_token"],
                          boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
                          eos_token_id=text.eos_token_id, tie_word_embeddings=False,
                          architectures=["Gemma3ForConditionalGeneration"])
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=torch.float32 if plan.tiny else torch.bfloat16)
    louder(model)
    model.save_pretrained(target)
    del model
    size = tower.image_size
    Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": size, "width": size}), tokenizer=tokenizer,
                    image_seq_length=config.mm_tokens_per_image).save_pretrained(target)
    return target


def picture(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{i}" for i in rng.integers(0, WORDS, n))


def image_requests(seed: int = 0) -> list[tuple[str, list]]:
    """One image behind a short text, two images among words, and a text-only request."""
    rng, boi = np.random.default_rng(seed), IMAGE_TOKENS["boi_token"]
    return [(f"{words(rng, 5)} {boi} {words(rng, 3)}", [picture(seed + 1)]),
            (f"{words(rng, 12)} {boi} {words(rng, 4)} {boi} {words(rng, 2)}", [picture(seed + 2), picture(seed + 3, 300, 900)]),
            (words(rng, 40), [])]


def check_images(plan: Plan, entry: dict) -> None:
    """Fills entry["model"] and entry[dtype] per plan dtype: the CUDA path against the portable one, with images."""
    folder = build_gemma3(plan, Path(tempfile.mkdtemp(prefix="gemma3-images-")))
    requests = image_requests()
    entry["model"] = f"gemma3 ({'tiny' if plan.tiny else 'SigLIP so400m 896 + Gemma-3-12B layers'}, 6 layers)"
    entry["requests"] = len(requests)
    for dtype in plan.correctness_dtypes:
        n = plan.correctness_output_len
        execution, fast, fast_async = run_engine_paths(folder, plan.fast_path(dtype), requests, n, with_async=True)
        _, portable, _ = run_engine_paths(folder, plan.portable_path(dtype), requests, n, with_async=False)
        result = compare(fast, fast_async, portable)
        result.update(execution=execution, passed=execution["attention_backend"] == "triton"
                      and execution["images"] != "none" and result["divergences_are_near_ties"]
                      and result["logprob_rel_err"] <= LOGPROB_REL_ERR_LIMIT[dtype])
        entry[dtype] = result
    entry["folder"] = str(folder)


def _first_token_s(engine: Engine, prompt: str, images: list) -> tuple[float, int]:
    """Seconds to the first token of one request alone, and its cached prompt tokens."""
    start = time.perf_counter()
    add_prompt(engine, "ttft", prompt, images, SamplingParams(max_tokens=1))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    return time.perf_counter() - start, outputs[0].num_cached_tokens


def _tokens_per_s(engine: Engine, requests: list[tuple[str, list]], output_len: int) -> float:
    start, total = time.perf_counter(), 0
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    for i, (prompt, images) in enumerate(requests):
        add_prompt(engine, f"c{i}", prompt, images, params)
    while engine.has_unfinished():
        total += sum(len(out.new_token_ids) for out in engine.step())
    return total / (time.perf_counter() - start)


def measure_images(plan: Plan, entry: dict) -> None:
    """TTFT (fresh image, prefix-cache hit, text as long) and concurrent image requests against text ones."""
    folder = Path(entry["folder"]) if "folder" in entry else build_gemma3(plan, Path(tempfile.mkdtemp()))
    engine = Engine(plan.served())
    engine.load_model(folder)
    boi, rng = IMAGE_TOKENS["boi_token"], np.random.default_rng(7)
    prompt = f"{words(rng, 8)} {boi} {words(rng, 8)}"
    prompt_tokens = len(engine.prepare_images(prompt, [picture(0)])[0])
    runs = {"fresh image": [], "same image again": [], "text as long": []}
    for round_ in range(plan.batch1_rounds + 1):  # the first round warms up (kernels, allocator): left out
        image = picture(1000 + round_)
        fresh = _first_token_s(engine, prompt, [image])
        again = _first_token_s(engine, prompt, [image])
        text = _first_token_s(engine, words(rng, prompt_tokens), [])
        if round_:
            for name, run in zip(runs, (fresh, again, text)):
                runs[name].append(run)
    entry["ttft_ms"] = {name: 1000 * statistics.median(r[0] for r in rs) for name, rs in runs.items()}
    entry["cached_tokens"] = {name: rs[0][1] for name, rs in runs.items()}
    entry["prompt_tokens"] = prompt_tokens
    n = plan.workloads[0]
    images = [(f"{words(rng, 8)} {boi} {words(rng, 8)}", [picture(2000 + i)]) for i in range(n)]
    texts = [(words(rng, prompt_tokens), []) for _ in range(n)]
    entry["concurrent"] = {"requests": n, "output_len": plan.batch1_output_len,
                           "image_tokens_per_s": _tokens_per_s(engine, images, plan.batch1_output_len),
                           "text_tokens_per_s": _tokens_per_s(engine, texts, plan.batch1_output_len)}
    entry["execution"] = engine.stats().execution
    engine.unload_model()

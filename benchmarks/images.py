"""What an image costs: prefill tokens and vision-tower work per image at each family's real resolution
(computed: the families' own PIL image processors, Llama 4's the engine's, on blank images, the vision towers
built on the meta device), and the time to first token of an image request with and without a prefix-cache hit on
a tiny model (measured).

Per family and image size: the placeholder tokens the image takes in the prompt (its share of the KV cache and of
the prefill), the patches its vision tower runs over, and the tower's matmul work, 2 x parameters x patches
(attention's own quadratic term left out: Qwen2.5-VL's tower attends in windows of 112 pixels but for four layers,
Qwen3.5's over all of an image's patches, Gemma 3's SigLIP over its 4,096 patches, Pixtral over all of an image's
patches, SmolVLM's SigLIP over each tile's 729, Llama 4's over each tile's 577). TTFT: the tiny Qwen2.5-VL and
Qwen3.5 of the tests (tests/engine/vision_models.py) in an engine on this machine, a 448 x 448 image (256
placeholders, Qwen3.5: 196) behind a short text, alone; then the same request again (its image's blocks from the
prefix cache: no encode, no prefill of the image; for the hybrid Qwen3.5, up to its prompt's last whole block,
where its states were kept) and one with another image of the same size (encoded and prefilled again).

    python -m benchmarks.images [--json OUT] [--skip-ttft]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import (Idefics3VisionConfig, Llama4VisionConfig, Llama4VisionModel, Mistral3Config,
                          PixtralVisionModel, Qwen2_5_VLConfig, SiglipVisionConfig, SiglipVisionModel)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.idefics3.modeling_idefics3 import Idefics3VisionTransformer
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeVisionModel

from benchmarks.model_shapes import QWEN3_5_IMAGE_PIXELS, QWEN3_5_VISION
from engine.llama4_images import Llama4ImageProcessor

SIZES = [(448, 448), (1024, 768), (1920, 1080), (3840, 2160)]
# The tests' tiny models timed to the first token (tests/engine/vision_models.py)
TTFT_MODELS = {"qwen2_5_vl": "tiny Qwen2.5-VL", "qwen3_5": "tiny Qwen3.5 (a hybrid: prefix caching on state snapshots)"}
REPEATS = 3


def parameters(module_class, config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in module_class._from_config(config).parameters())


def qwen2_5_vl_7b() -> dict:
    """Qwen2.5-VL-7B-Instruct's vision tower and its preprocessor_config.json's pixel bounds."""
    vision = Qwen2_5_VLConfig(vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                                 out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                                 temporal_patch_size=2, window_size=112,
                                                 fullatt_block_indexes=[7, 15, 23, 31])).vision_config
    processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                                         temporal_patch_size=2)
    return qwen_sizes(processor, parameters(Qwen2_5_VisionTransformerPretrainedModel, vision))


def qwen3_5(vision_model: type, out_hidden_size: int) -> dict:
    """Qwen3.5 / Qwen3.6: their vision tower (model_shapes.QWEN3_5_VISION), its merger's output the language model's
    width, and their preprocessor_config.json's pixel bounds."""
    vision = vision_model.config_class(**QWEN3_5_VISION, out_hidden_size=out_hidden_size)
    processor = Qwen2VLImageProcessorPil(size=QWEN3_5_IMAGE_PIXELS, patch_size=16, merge_size=2, temporal_patch_size=2)
    return qwen_sizes(processor, parameters(vision_model, vision))


def qwen_sizes(processor, params: int) -> dict:
    """A Qwen tower's cost per image size: a placeholder token per 2 x 2 merged patches."""

    def per_image(size) -> dict:
        grid = processor(Image.new("RGB", size), return_tensors="pt")["image_grid_thw"][0]
        patches = int(grid.prod())
        return {"tokens": patches // 4, "patches": patches, "gflop": 2 * params * patches / 1e9}

    return {"params": params, "sizes": {f"{w}x{h}": per_image((w, h)) for w, h in SIZES}}


def gemma3() -> dict:
    """Gemma 3 (4B, 12B, 27B): SigLIP so400m at 896 x 896, pooled to 256 tokens; every image is resized to it."""
    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                image_size=896, patch_size=14)
    processor = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})
    params = parameters(SiglipVisionModel, vision)

    def per_image(size) -> dict:
        pixels = processor(Image.new("RGB", size), return_tensors="pt")["pixel_values"]
        patches = (pixels.shape[-1] // 14) * (pixels.shape[-2] // 14)
        return {"tokens": 256, "patches": patches, "gflop": 2 * params * patches / 1e9}

    return {"params": params, "sizes": {f"{w}x{h}": per_image((w, h)) for w, h in SIZES}}


def mistral_small_3_1() -> dict:
    """Mistral Small 3.1 / 3.2 (24B): Pixtral at patch 14 up to 1540 pixels a side, 2 x 2 patches merged per token.

    Mistral3Config's default vision_config has Mistral-Small-3.1-24B-Instruct-2503's dimensions; the image processor's
    own defaults are Pixtral-12B's (patch 16, longest edge 1024), so the checkpoint's longest_edge 1540 is given here,
    and patch 28 as Mistral 3's processor passes it (patch 14 x spatial_merge_size 2: each side a whole number of
    merged tokens). Each row of tokens ends in [IMG_BREAK] ([IMG_END] for the last): markers in the prompt.
    """
    config = Mistral3Config()
    patch, merge = config.vision_config.patch_size, config.spatial_merge_size
    processor = PixtralImageProcessorPil(size={"longest_edge": 1540}, patch_size=patch * merge)
    params = parameters(PixtralVisionModel, config.vision_config)

    def per_image(size) -> dict:
        height, width = (int(side) for side in processor(Image.new("RGB", size), return_tensors="pt")["image_sizes"][0])
        patches = (height // patch) * (width // patch)
        return {"tokens": patches // merge**2, "markers": height // (patch * merge), "patches": patches,
                "gflop": 2 * params * patches / 1e9}

    return {"params": params, "sizes": {f"{w}x{h}": per_image((w, h)) for w, h in SIZES}}


def smolvlm_instruct() -> dict:
    """SmolVLM-Instruct (Idefics3): SigLIP so400m at 384 x 384 per tile, 3 x 3 patches shuffled into a token.

    Its preprocessor_config.json: longest_edge 1536, tiles of max_image_size 384 (so up to 4 x 4 tiles and the
    whole image shrunk to one more); its processor_config.json: image_seq_len 81 (27 x 27 patches / 3**2).
    Markers in the prompt: <fake_token_around_image><row_r_col_c> before each tile, a newline after each row of
    tiles, <fake_token_around_image><global-img> ... <fake_token_around_image> around the whole image (the newline
    before it merges with the last row's into one token in SmolLM2's tokenizer). A picture is first resized to
    the longest edge 1536, up as well as down, so a small image costs as much as a large one of its shape.
    """
    vision = Idefics3VisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                  image_size=384, patch_size=14)
    processor = Idefics3ImageProcessorPil(size={"longest_edge": 1536}, max_image_size={"longest_edge": 384})
    params = parameters(Idefics3VisionTransformer, vision)
    tile_patches, image_seq_len = (384 // 14) ** 2, 81

    def per_image(size) -> dict:
        split = processor(Image.new("RGB", size), return_row_col_info=True, return_tensors="pt")
        rows, cols = split["rows"][0][0], split["cols"][0][0]
        tiles = rows * cols + 1
        return {"tokens": tiles * image_seq_len, "markers": 2 * rows * cols + rows + 3, "patches": tiles * tile_patches,
                "gflop": 2 * params * tiles * tile_patches / 1e9}

    return {"params": params, "sizes": {f"{w}x{h}": per_image((w, h)) for w, h in SIZES}}


def llama4_scout() -> dict:
    """Llama 4 Scout and Maverick (the same vision tower): their config.json's vision_config (34 layers, hidden 1408,
    tiles of 336 x 336 in patches of 14, pixel-shuffled 2 x 2 into 144 tokens a tile) and preprocessor_config.json
    (at most 16 tiles, no upscaling past a tile's side). An image is resized into the canvas of whole tiles that fits
    it best and, where that is several tiles, also shrunk to one more. Markers: <|image_start|>, a
    <|tile_x_separator|> between a row's tiles and a <|tile_y_separator|> after each row (several tiles only),
    <|image|> before the whole image's tokens, <|image_end|>."""
    vision = Llama4VisionConfig(hidden_size=1408, intermediate_size=5632, num_hidden_layers=34, num_attention_heads=16,
                                image_size=336, patch_size=14, vision_output_dim=4096)
    processor = Llama4ImageProcessor(size={"height": 336, "width": 336}, max_patches=16)
    params = parameters(Llama4VisionModel, vision)
    tile_patches = (336 // 14) ** 2

    def per_image(size) -> dict:
        rows, columns = processor(Image.new("RGB", size), return_tensors="pt")["aspect_ratios"][0].tolist()
        tiles = rows * columns + (1 if rows * columns > 1 else 0)
        separators = rows * columns if tiles > 1 else 0  # (columns - 1) x-separators and one y-separator a row
        return {"tokens": tiles * tile_patches // 4, "markers": 3 + separators, "patches": tiles * tile_patches,
                "gflop": 2 * params * tiles * tile_patches / 1e9}

    return {"params": params, "sizes": {f"{w}x{h}": per_image((w, h)) for w, h in SIZES}}


def ttft(tokenizer_from: Path, family: str) -> dict:
    """Seconds to the first token: a fresh image, the same image again (prefix-cache and encoder-cache hit; for a
    hybrid, a prefix-cache hit up to its prompt's last whole block), another image."""
    from engine import Engine, EngineConfig, SamplingParams
    from tests.engine.vision_models import QWEN_IMAGE, build_vlm, image

    folder = build_vlm(family, Path(tempfile.mkdtemp()), tokenizer_from, max_pixels=448 * 448)
    engine = Engine(EngineConfig(dtype="float32", max_num_batched_tokens=512, num_kv_blocks=512))
    engine.load_model(folder)
    prompt = f"Describe {QWEN_IMAGE} in a word"
    count = iter(range(10**6))

    def first_token(picture) -> tuple[float, int, int]:
        start = time.perf_counter()
        ids, images = engine.prepare_images(prompt, [picture])
        request = f"r{next(count)}"
        engine.add_request(request, ids, SamplingParams(max_tokens=1), images=images)
        outputs = []
        while engine.has_unfinished():
            outputs += engine.step()
        return time.perf_counter() - start, len(ids), outputs[0].num_cached_tokens

    runs = {"fresh": [], "the same image again": [], "another image": []}
    for seed in range(REPEATS):
        picture = image(100 + seed, 448, 448)
        runs["fresh"].append(first_token(picture))
        runs["the same image again"].append(first_token(picture))
        runs["another image"].append(first_token(image(200 + seed, 448, 448)))
    return {name: {"ttft_s": statistics.median(r[0] for r in rs), "prompt_tokens": rs[0][1],
                   "cached_tokens": rs[0][2]} for name, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tokenizer", type=Path, default=Path.home() / ".cache/appliance-tests/models/smollm2-135m-instruct",
                        help="a tokenizer folder for the tiny model (the tests' default model)")
    parser.add_argument("--skip-ttft", action="store_true", help="only the computed per-family table")
    args = parser.parse_args()
    families = {"Qwen2.5-VL-7B": qwen2_5_vl_7b(), "Qwen3.5-27B": qwen3_5(Qwen3_5VisionModel, 5120),
                "Qwen3.6-35B-A3B": qwen3_5(Qwen3_5MoeVisionModel, 2048), "Gemma 3 (4B-27B)": gemma3(),
                "Mistral Small 3.1/3.2": mistral_small_3_1(), "SmolVLM-Instruct": smolvlm_instruct(),
                "Llama 4 Scout/Maverick": llama4_scout()}
    print("| family (vision parameters) | image | placeholder tokens | patches | tower GFLOP |")
    print("|---|---|---|---|---|")
    for name, family in families.items():
        for size, f in family["sizes"].items():
            markers = f" (+{f['markers']} markers)" if f.get("markers") else ""
            print(f"| {name} ({family['params'] / 1e6:.0f} M) | {size} | {f['tokens']:,}{markers} | {f['patches']:,} | "
                  f"{f['gflop']:,.0f} |")
    results = {"families": families}
    if not args.skip_ttft:
        results["ttft"] = {}
        for family, label in TTFT_MODELS.items():
            results["ttft"][family] = timings = ttft(args.tokenizer, family)
            print(f"\n| {label}, 448 x 448 image | TTFT | prompt tokens | cached tokens |")
            print("|---|---|---|---|")
            for name, t in timings.items():
                print(f"| {name} | {t['ttft_s'] * 1000:.1f} ms | {t['prompt_tokens']} | {t['cached_tokens']} |")
            fresh, hit = timings["fresh"]["ttft_s"], timings["the same image again"]["ttft_s"]
            print(f"\nthe same image again: {fresh / hit:.1f}x faster to the first token")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

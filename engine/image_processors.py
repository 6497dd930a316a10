"""The families' transformers processors for images alone, and what they give, image by image.

A family's processor also wants a video processor, which needs torchvision, and the engine takes no
video: the processor is built with an image processor and a tokenizer only (the family's PIL image
processor where torchvision is missing; PixtralProcessor's module loads without it too; Llama 4's, which
transformers has for torchvision alone, on torch's ops: engine.llama4_images). Its output
for a prompt's images together is split image by image (engine.vision encodes them one by one,
within the encoder budget), and an image's content hash identifies it for the prefix and encoder caches.
"""

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import sys
from pathlib import Path

import transformers
from transformers import AutoImageProcessor
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from engine.llama4_images import Llama4ImageProcessor

# Families whose image processor's size counts pixels (smart_resize's min_pixels and max_pixels), not edges.
PIXEL_COUNT_SIZES = {"qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"}
# What the processor gives that is the text's, not the vision tower's.
TEXT_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "text_replacement_offsets")
# Image processors that transformers has for its torchvision backend alone, by model type: the engine's own
IMAGE_PROCESSORS_WITHOUT_TORCHVISION = {"llama4": Llama4ImageProcessor}
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None  # found, not imported


def image_content_hash(image) -> int:
    """What identifies an image's content (a PIL image: its mode, size and pixels) for prefix caching."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def images_only(family: type) -> type:
    """A family's processor class with an image processor and a tokenizer only: no video processor, which needs
    torchvision (given as None where the family's __init__ requires one, as SmolVLM's does). Named as the family's,
    so that a saved processor_config.json names the family's class."""
    parts = [p for p in family.get_attributes() if p in ("image_processor", "tokenizer")]
    left_out = dict.fromkeys(p for p in family.get_attributes() if p not in parts)

    @functools.wraps(family.__init__)  # its signature: what save_pretrained writes of the processor's options
    def __init__(self, *args, **kwargs):
        family.__init__(self, *args, **{**left_out, **kwargs})

    return type(family.__name__, (family,), {"get_attributes": classmethod(lambda cls: parts), "__init__": __init__})


def processor_class(model_type: str) -> type:
    """The family's transformers processor class. PixtralProcessor's module imports the torchvision image
    processor's module for get_resize_output_image_size alone (which the PIL one's module defines too): where
    torchvision is missing, that import is given the PIL module while the processor's module loads."""
    name = PROCESSOR_MAPPING_NAMES[model_type]
    if name != "PixtralProcessor" or HAS_TORCHVISION:
        return getattr(transformers, name)
    pixtral = "transformers.models.pixtral"
    if f"{pixtral}.processing_pixtral" not in sys.modules:
        sys.modules[f"{pixtral}.image_processing_pixtral"] = importlib.import_module(f"{pixtral}.image_processing_pil_pixtral")
        try:
            importlib.import_module(f"{pixtral}.processing_pixtral")
        finally:
            del sys.modules[f"{pixtral}.image_processing_pixtral"]
    return sys.modules[f"{pixtral}.processing_pixtral"].PixtralProcessor


def images_processor(path: Path, model_type: str, tokenizer):
    """The checkpoint's processor for images and text: its image processor (the PIL one, or the engine's own, where
    torchvision is missing), the given tokenizer, and the processor's own options from processor_config.json."""
    family = processor_class(model_type)
    file = path / "processor_config.json"
    saved = json.loads(file.read_text()) if file.exists() else {}
    options = {k: v for k, v in saved.items()
               if k in inspect.signature(family.__init__).parameters and k not in family.get_attributes()}
    own = IMAGE_PROCESSORS_WITHOUT_TORCHVISION.get(model_type)
    if own is not None and not HAS_TORCHVISION:
        image_processor = own.from_pretrained(path)
    else:
        image_processor = AutoImageProcessor.from_pretrained(path)
    return images_only(family)(image_processor=image_processor, tokenizer=tokenizer, **options)


def largest_image_side(model_type: str, image_processor) -> int:
    """The side of the square image with the most placeholders the family's image processor makes: every image is
    resized to at most its size (Qwen's: at most max_pixels, a square for the published checkpoints, 3584 x 3584 for
    Qwen2.5-VL; Pixtral's and Idefics3's: a longest edge, Idefics3's square image giving the most sub-images;
    Gemma 3's: one size for every image; Llama 4's: the square of tiles that max_patches allows)."""
    size = image_processor.size
    if model_type == "llama4":
        return size.height * math.isqrt(image_processor.max_patches)
    if size.height is not None:
        return max(size.height, size.width)
    if model_type in PIXEL_COUNT_SIZES:
        return math.isqrt(size.longest_edge)
    return size.longest_edge


def per_image_inputs(inputs: dict, placeholders: list[int]) -> list[dict]:
    """A prompt's vision-tower inputs (the processor gives them for its images together) image by image: split
    along the first dimension where it numbers the images; Qwen's patch rows by each image's grid; sub-images by
    each image's share of the placeholders (each sub-image has as many): Idefics3's along the second dimension (a
    batch of one prompt), Llama 4's tiles along the first."""
    n = len(placeholders)
    if n == 1:
        return [inputs]
    grid = inputs.get("image_grid_thw")
    parts = {}
    for key, value in inputs.items():
        if key == "pixel_values" and grid is not None:
            parts[key] = value.split(grid.prod(-1).tolist())
        elif value.shape[0] == n:
            parts[key] = value.split(1)
        elif value.shape[0] == 1 or key == "pixel_values":
            dim = 1 if value.shape[0] == 1 else 0
            per_placeholder = value.shape[dim] / sum(placeholders)
            parts[key] = value.split([round(p * per_placeholder) for p in placeholders], dim=dim)
        else:
            raise ValueError(f"the image processor's {key} of shape {tuple(value.shape)} is not split by image "
                             f"({n} images, {placeholders} placeholders)")
    return [{key: part[i] for key, part in parts.items()} for i in range(n)]

"""Tiny random vision-language models with their processors, built at test time (no download), and images.

The tokenizer is the default model's (SmolLM2) with the family's image tokens added; the image processor is
the family's PIL one (no torchvision), sized so that an image is a handful of placeholder tokens.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from engine.vision import images_only, images_processor
from tests.engine.architectures import CONFIGS, sharpened

QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# A chat template that puts the family's image tokens where a message's image parts are (as Qwen2.5-VL's does).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + QWEN_IMAGE + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen2_5_vl(target: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2.5-VL (two text layers, one vision block) with its processor, saved to target."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>",
                                                                "<|image_pad|>", "<|video_pad|>"]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    config = CONFIGS["qwen2_5_vl"](len(tokenizer))
    for name, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))
    config.text_config.eos_token_id = config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = sharpened(Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32))
    louder(model)
    model.save_pretrained(target)
    # Images of 28 x 28 to 56 x 112 pixels: 1 to 8 merged patches of 28 x 28, one placeholder token each.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 112, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    images_only(Qwen2_5_VLProcessor)(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)
    return target


def louder(model: torch.nn.Module) -> None:
    """Vision weights, and the language model's attention values and outputs, drawn at a few times
    1/sqrt(fan-in) rather than transformers' 0.02: the image embeddings are then as loud as the sharpened token
    embeddings and what attention brings from them decides the next token (two images give two answers)."""
    with torch.no_grad():
        for part in model.model.visual.modules():
            if isinstance(part, (torch.nn.Linear, torch.nn.Conv3d)):
                part.weight.normal_(0, 2.0 / part.weight[0].numel() ** 0.5)
        for name, weight in model.model.language_model.named_parameters():
            if name.endswith(("v_proj.weight", "o_proj.weight")):
                weight.normal_(0, 3.0 / weight.shape[1] ** 0.5)


def image(seed: int, width: int = 112, height: int = 56) -> Image.Image:
    """A random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def reference(folder: Path) -> tuple[torch.nn.Module, object]:
    """The saved model as transformers loads it, for generate(), and its processor."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model, images_processor(folder, "qwen2_5_vl", AutoTokenizer.from_pretrained(folder))


def generate_alone(model, processor, prompt: str, images: list, n: int) -> list[int]:
    """Greedy tokens of transformers' generate() for the prompt and its images alone, on the processor's inputs."""
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()

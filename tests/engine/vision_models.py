"""Tiny random vision-language models with their processors, built at test time (no download), and images.

The tokenizer is the default model's (SmolLM2) with the family's image tokens added; the image processor is
the family's PIL one (no torchvision), sized so that an image is a handful of placeholder tokens; the chat
template (ChatML) writes the family's image placeholder where a message has an image part.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, Gemma3Processor, Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from engine.image_processors import images_only, images_processor, processor_class
from engine.llama4_images import Llama4ImageProcessor
from tests.engine.architectures import CONFIGS, IMAGE_ONLY_CONFIGS, model_class, sharpened


@dataclass(frozen=True)
class Family:
    image: str  # what the chat template writes for an image: the processor's placeholder
    special_tokens: dict  # added to the tokenizer: role -> token (Gemma's named ones) or a list of extra tokens
    config_tokens: dict  # the model config's token id fields -> their token

    def chat_template(self) -> str:
        return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                "{% if message['content'] is string %}{{ message['content'] }}"
                "{% else %}{% for part in message['content'] %}"
                "{% if part['type'] == 'image' %}" + self.image +
                "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
                "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
GEMMA_IMAGE = "<start_of_image>"
FAMILIES = {
    # An image of 28 x 28 to 56 x 112 pixels: 1 to 8 merged patches of 28 x 28, one placeholder each.
    "qwen2_5_vl": Family(QWEN_IMAGE, {"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>",
                                                                   "<|image_pad|>", "<|video_pad|>"]},
                         {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                          "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}),
    # Every image resized to 28 x 28: four patches, pooled to four placeholders that attend to each other both ways.
    "gemma3": Family(GEMMA_IMAGE, {"extra_special_tokens": {"boi_token": "<start_of_image>",
                                                            "eoi_token": "<end_of_image>",
                                                            "image_token": "<image_soft_token>"}},
                     {"image_token_id": "<image_soft_token>", "boi_token_index": "<start_of_image>",
                      "eoi_token_index": "<end_of_image>"}),
    # Longest edge at most 112 pixels, patches of 14 merged 2 x 2: an [IMG] per 28 x 28 pixels (1 to 8), an
    # [IMG_BREAK] after each row but the last, which ends with [IMG_END].
    "mistral3": Family("[IMG]", {"additional_special_tokens": ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]},
                       {"image_token_id": "[IMG]"}),
    # Longest edge resized to 112 pixels and split into sub-images of at most 56 x 56 (a <row_r_col_c> token before
    # each, as SmolVLM's tokenizer has them; rows ended by a newline), then the whole image at 56 (<global-img>):
    # four <image> placeholders each.
    "idefics3": Family("<image>", {"additional_special_tokens": [
        "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>",
        *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]}, {"image_token_id": "<image>"}),
}
FAMILIES["smolvlm"] = FAMILIES["idefics3"]  # Idefics3's shape, its own classes
# Tiles of 56 x 56 pixels, at most 4 an image, and the whole image as one more where there are several: 4 <|patch|>
# placeholders a tile, <|tile_x_separator|> between a row's tiles, <|tile_y_separator|> after each row, <|image|>
# before the whole image's.
LLAMA4_TOKENS = ["<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>",
                 "<|tile_y_separator|>"]
FAMILIES["llama4"] = Family("<|image|>", {"additional_special_tokens": LLAMA4_TOKENS},
                            {"image_token_index": "<|patch|>", "boi_token_index": "<|image_start|>",
                             "eoi_token_index": "<|image_end|>"})
# Qwen2.5-VL's tokens, patches of 16 (one placeholder per 32 x 32 pixels): Qwen3-VL, its MoE, Qwen3.5 and Qwen3.6
QWEN3_VL_SHAPED = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
FAMILIES |= dict.fromkeys(QWEN3_VL_SHAPED, FAMILIES["qwen2_5_vl"])
QWEN_PROCESSORS = {"qwen2_5_vl": (Qwen2_5_VLProcessor, 14)} | dict.fromkeys(QWEN3_VL_SHAPED, (Qwen3VLProcessor, 16))
SPLIT_IMAGE_PROCESSORS = {"idefics3": Idefics3ImageProcessorPil, "smolvlm": SmolVLMImageProcessorPil}


def build_vlm(family: str, target: Path, tokenizer_from: Path, seed: int = 0, max_pixels: int = 56 * 112) -> Path:
    """A tiny random vision-language model of the family with its processor, saved to target (Qwen's images
    resized to at most max_pixels, in Qwen2.5-VL's 28 x 28 patches: as many placeholders for Qwen3-VL's)."""
    spec = FAMILIES[family]
    extra = spec.special_tokens.get("extra_special_tokens")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, **({"extra_special_tokens": extra} if extra else {}))
    if not extra:
        tokenizer.add_special_tokens(spec.special_tokens)
    tokenizer.chat_template = spec.chat_template()
    config = (IMAGE_ONLY_CONFIGS.get(family) or CONFIGS[family])(len(tokenizer))
    for name, token in spec.config_tokens.items():
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))
    config.text_config.eos_token_id = config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = sharpened(model_class(config)._from_config(config, dtype=torch.float32))
    louder(model)
    model.save_pretrained(target)
    if family in QWEN_PROCESSORS:
        family_processor, patch = QWEN_PROCESSORS[family]
        placeholder_pixels = (2 * patch) ** 2  # a 2 x 2 merge of patches
        image_processor = Qwen2VLImageProcessorPil(min_pixels=placeholder_pixels,
                                                   max_pixels=max_pixels * placeholder_pixels // 28 ** 2,
                                                   patch_size=patch, merge_size=2, temporal_patch_size=2)
        processor = images_only(family_processor)(image_processor=image_processor, tokenizer=tokenizer)
    elif family == "mistral3":
        processor = images_only(processor_class("mistral3"))(
            image_processor=PixtralImageProcessorPil(size={"longest_edge": 112}), tokenizer=tokenizer,
            patch_size=config.vision_config.patch_size, spatial_merge_size=config.spatial_merge_size)
    elif family == "llama4":
        vision = config.vision_config
        processor = images_only(processor_class("llama4"))(
            image_processor=Llama4ImageProcessor(size={"height": vision.image_size, "width": vision.image_size},
                                                 max_patches=4),
            tokenizer=tokenizer, patch_size=vision.patch_size, pixel_shuffle_ratio=vision.pixel_shuffle_ratio)
    elif family in SPLIT_IMAGE_PROCESSORS:
        vision = config.vision_config
        processor = images_only(processor_class(family))(
            image_processor=SPLIT_IMAGE_PROCESSORS[family](size={"longest_edge": 112}, max_image_size={"longest_edge": 56}),
            tokenizer=tokenizer, image_seq_len=(vision.image_size // vision.patch_size // config.scale_factor) ** 2)
    else:
        processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
                                    tokenizer=tokenizer, image_seq_length=config.mm_tokens_per_image)
    processor.save_pretrained(target)
    return target


def louder(model: torch.nn.Module) -> None:
    """Vision weights, and the language model's attention values and outputs, drawn at a few times
    1/sqrt(fan-in) rather than transformers' 0.02 (Gemma 3's projection: zeros): the image embeddings are then
    as loud as the sharpened token embeddings and what attention brings from them decides the next token (two
    images give two answers)."""
    base = getattr(model, "model", model)  # Llama 4's multimodal model keeps its parts itself
    vision = [getattr(base, name) for name in ("visual", "vision_tower", "vision_model", "multi_modal_projector",
                                               "connector") if hasattr(base, name)]
    with torch.no_grad():
        for part in vision:
            for weight in (p for p in part.parameters() if p.dim() >= 2):
                weight.normal_(0, 2.0 / weight[0].numel() ** 0.5)
        for name, weight in base.get_decoder().named_parameters():
            if name.endswith(("v_proj.weight", "o_proj.weight")):
                weight.normal_(0, 3.0 / weight.shape[1] ** 0.5)


def image(seed: int, width: int = 112, height: int = 56) -> Image.Image:
    """A random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def reference(folder: Path) -> tuple[torch.nn.Module, object]:
    """The saved model as transformers loads it, for generate(), and its processor."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    model = model_class(config).from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model, images_processor(folder, config.model_type, AutoTokenizer.from_pretrained(folder))


def generate_alone(model, processor, prompt: str, images: list, n: int) -> list[int]:
    """Greedy tokens of transformers' generate() for the prompt and its images alone, on the processor's inputs."""
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt", add_special_tokens=False)
    # at the model's dtype, as the engine gives them (Llama 4's processor gives bfloat16 pixels)
    inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()

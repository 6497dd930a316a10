"""The vision side of a multimodal checkpoint: its own processor, vision tower and projector.

`prepare` (any thread) runs the family's transformers processor on a prompt and its images: the image
processor's pixel values, each image's placeholder token repeated as often as the image has embeddings,
and, for multimodal RoPE, the family's own 3D positions (get_rope_index). The processor is built
for images alone: the families' processors also want a video processor, which needs torchvision, and
the engine takes no video. Where torchvision is missing the families' PIL image processors run (and
PixtralProcessor loads without it: processor_class). An image's span runs from its first placeholder to its
last, with whatever the family writes between them (Pixtral's [IMG_BREAK] after each row, Idefics3's
sub-images with their <row_r_col_c> markers).

`step_inputs` (the engine thread) runs the vision tower for the sequences whose prefill chunk this step
reaches their images and that have no embeddings yet, one call for all of them; puts the embeddings at
the placeholders' rows of the packed batch (the model then takes inputs_embeds); and gives multimodal
RoPE its positions. Where the family's language model adds "deepstack" features (Qwen3-VL: the vision
tower's features from some of its layers, added to the image rows' hidden states after the language
model's first layers), each placeholder's features are kept beside its embedding (one tensor: released
and cached together), and the model is given the rows that got image embeddings this step with their
features. A sequence keeps its embeddings until its prefill has passed its last image (chunked prefill
may cut an image), then releases them; a preempted sequence takes them again when recomputed.
The encoder cache keeps image embeddings by content (the most recently used, up to the engine's
encoder_cache_tokens rows): a sequence whose images it all holds is not encoded, so a repeated image, as
in a follow-up turn, runs through the vision tower once.

Families (checked against generate() by tests/engine/test_vision.py): Qwen2.5-VL (multimodal RoPE), Qwen3-VL
(multimodal RoPE and deepstack), Mistral 3 (Pixtral's vision tower, images of any aspect ratio, given with
their image_sizes), Idefics3 and SmolVLM (each image split into sub-images, and the whole image beside them)
and Gemma 3, whose image placeholders attend to each other both ways: a prefill chunk then holds an image
whole (the scheduler does not cut it, engine.prompt_images) and its mask lets the image's tokens see
each other (engine.packing's torch path; on the triton backend Gemma 3's images are refused). The
images of other families are refused, their text served.
"""

import bisect
from collections import OrderedDict
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoImageProcessor
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from engine.errors import InvalidParameter
from engine.prompt_images import ImageSpan, PromptImages
from engine.scheduler import ScheduledSequence
from engine.sequence import Sequence

# Model types whose images the engine runs (checked against generate() by tests/engine/test_vision.py).
IMAGE_FAMILIES = {"qwen2_5_vl", "qwen3_vl", "gemma3", "mistral3", "idefics3", "smolvlm"}
BIDIRECTIONAL_IMAGES = {"gemma3"}  # families whose image placeholders attend to each other both ways
# Families whose language model adds the vision tower's features from some of its layers ("deepstack") to the
# image rows' hidden states after its first layers.
DEEPSTACK_IMAGES = {"qwen3_vl"}
# What the processor gives that is the text's, not the vision tower's.
TEXT_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "text_replacement_offsets")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


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
    if name != "PixtralProcessor" or importlib.util.find_spec("torchvision") is not None:
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
    """The checkpoint's processor for images and text: its image processor (the PIL one where torchvision is
    missing), the given tokenizer, and the processor's own options from processor_config.json."""
    family = processor_class(model_type)
    file = path / "processor_config.json"
    saved = json.loads(file.read_text()) if file.exists() else {}
    options = {k: v for k, v in saved.items()
               if k in inspect.signature(family.__init__).parameters and k not in family.get_attributes()}
    return images_only(family)(image_processor=AutoImageProcessor.from_pretrained(path), tokenizer=tokenizer, **options)


def loads_vision(model_type: str | None, path: Path) -> bool:
    """Whether the checkpoint in this folder loads its vision side: a family whose images the engine runs, with a
    tokenizer and a processor."""
    return (model_type in IMAGE_FAMILIES and any(path.glob("tokenizer*"))
            and any((path / f).exists() for f in PROCESSOR_FILES))


def vectors_per_placeholder(config: dict) -> int:
    """What the encoder cache keeps per placeholder token, in vectors of the language model's width (from the
    checkpoint's config.json): its embedding, and for deepstack its feature per deepstack layer (the family's
    default layers where the file leaves them out)."""
    model_type = config.get("model_type")
    if model_type not in DEEPSTACK_IMAGES:
        return 1
    layers = config.get("vision_config", {}).get("deepstack_visual_indexes")
    if layers is None:
        layers = transformers.AutoConfig.for_model(model_type).vision_config.deepstack_visual_indexes
    return 1 + len(layers)


class EncoderCache:
    """Image embeddings (with their deepstack features) by their image's content hash, the least recently used
    dropped past max_tokens rows."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.tokens = 0

    def get(self, content_hash: int) -> torch.Tensor | None:
        embeddings = self.entries.get(content_hash)
        if embeddings is not None:
            self.entries.move_to_end(content_hash)
        return embeddings

    def put(self, content_hash: int, embeddings: torch.Tensor) -> None:
        if content_hash in self.entries or len(embeddings) > self.max_tokens:
            return
        self.entries[content_hash] = embeddings
        self.tokens += len(embeddings)
        while self.tokens > self.max_tokens:
            self.tokens -= len(self.entries.popitem(last=False)[1])


@dataclass
class Vision:
    """A loaded checkpoint's vision side, beside its language model (which shares the multimodal model's modules)."""

    # the multimodal base model: get_image_features, and get_rope_index for multimodal RoPE
    model: torch.nn.Module = field(repr=False)
    processor: object = field(repr=False)
    model_type: str
    image_token: str  # what the prompt holds once per image (the chat template writes it)
    placeholder_id: int  # the token the processor repeats for each of an image's embeddings
    images_encoded: int = 0  # images the vision tower has run over

    @classmethod
    def load(cls, path: Path, multimodal: torch.nn.Module, tokenizer) -> "Vision":
        """The vision side of a loaded multimodal model (of a checkpoint that loads_vision)."""
        model_type = multimodal.config.model_type
        processor = images_processor(path, model_type, tokenizer)
        return cls(multimodal.model, processor, model_type, processor.image_token, multimodal.config.image_token_id)

    @property
    def multimodal_rope(self) -> bool:
        return hasattr(self.model, "get_rope_index")

    @property
    def bidirectional(self) -> bool:
        return self.model_type in BIDIRECTIONAL_IMAGES

    @property
    def deepstack(self) -> bool:
        return self.model_type in DEEPSTACK_IMAGES

    # -- any thread ----------------------------------------------------------------------------
    def prepare(self, prompt: str, images: list) -> tuple[list[int], PromptImages]:
        """The prompt's token ids with each image's placeholders expanded, and its images for the sequence.
        The prompt holds the image token once per image, where the image goes (the chat template puts it)."""
        if not isinstance(prompt, str):
            raise InvalidParameter("prompt", f"a prompt with images is text holding {self.image_token} once per image")
        found = prompt.count(self.image_token)
        if found != len(images):
            raise InvalidParameter("prompt", f"the prompt holds the image placeholder {self.image_token} {found} times "
                                             f"for {len(images)} images; put it once per image")
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt", return_mm_token_type_ids=True,
                                return_text_replacement_offsets=True, add_special_tokens=False)
        ids = inputs["input_ids"][0]
        rows = (ids == self.placeholder_id).nonzero().flatten().tolist()
        # Each image's text (its placeholders, and the family's breaks, row markers or sub-images between them)
        # holds as many placeholders as the image has embeddings.
        placeholder = self.processor.tokenizer.convert_ids_to_tokens(self.placeholder_id)
        counts = [r["replacement"].count(placeholder) for r in inputs["text_replacement_offsets"][0]]
        if sum(counts) != len(rows):
            raise InvalidParameter("prompt", f"the prompt holds the image placeholder token {placeholder} outside "
                                             "its images; remove it from the text")
        firsts = [sum(counts[:i]) for i in range(len(counts))]
        spans = [ImageSpan(rows[first], rows[first + count - 1] + 1, image_content_hash(image))
                 for first, count, image in zip(firsts, counts, images)]
        encoder_inputs = {k: v for k, v in inputs.items() if k not in TEXT_INPUTS}
        prompt_images = PromptImages(encoder_inputs, rows, spans, bidirectional=self.bidirectional)
        if self.multimodal_rope:
            positions, delta = self.model.get_rope_index(
                input_ids=ids[None], mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"))
            prompt_images.rope_positions, prompt_images.rope_delta = positions[:, 0], int(delta)
        return ids.tolist(), prompt_images

    # -- the engine thread ---------------------------------------------------------------------
    def encode(self, seqs: list[Sequence], device: torch.device, cache: EncoderCache) -> None:
        """Each sequence's embeddings: from the cache where it holds all its images, the others' from one run of
        the vision tower over their images (then cached)."""
        missing = []
        for s in seqs:
            cached = [cache.get(span.content_hash) for span in s.images.spans]
            if all(c is not None for c in cached):
                s.images.embeddings = torch.cat(cached)
            else:
                missing.append(s)
        if not missing:
            return
        keys = missing[0].images.encoder_inputs.keys()
        batch = {k: _stacked([s.images.encoder_inputs[k] for s in missing]).to(device) for k in keys}
        # one [tokens, hidden] per image, or per sub-image (a tuple, or [images, tokens, hidden]), in order
        output = self.model.get_image_features(**batch)
        rows = torch.cat(list(output.pooler_output))
        if self.deepstack:  # each placeholder's embedding, then its feature for each deepstack layer
            rows = torch.stack([rows, *(torch.cat(list(layer)) for layer in output.deepstack_features)], dim=1)
        self.images_encoded += sum(s.images.num_images for s in missing)
        for s, embeddings in zip(missing, rows.split([len(s.images.rows) for s in missing])):
            s.images.embeddings = embeddings
            per_image = [bisect.bisect_left(s.images.rows, span.end) - bisect.bisect_left(s.images.rows, span.start)
                         for span in s.images.spans]
            for span, mine in zip(s.images.spans, embeddings.split(per_image)):
                cache.put(span.content_hash, mine)

    def step_inputs(self, embed_tokens: torch.nn.Module, scheduled: list[ScheduledSequence], input_ids: torch.Tensor,
                    positions: torch.Tensor, last_row: dict, cache: EncoderCache) -> dict:
        """The model's inputs for a packed step where some sequences have images: inputs_embeds [1, T, hidden],
        position_ids, and for deepstack the rows that got image embeddings (visual_pos_masks [1, T]) with their
        features per deepstack layer (deepstack_visual_embeds, in the rows' order)."""
        with_images = [s for s in scheduled if s.seq.images is not None]
        due = [s.seq for s in with_images if s.seq.images.embeddings is None and self._reaches_images(s)]
        if due:
            self.encode(due, input_ids.device, cache)
        embeds = embed_tokens(input_ids)
        rope = positions.expand(3, -1).clone() if self.multimodal_rope else None
        image_rows, deepstack = [], []
        for s in with_images:
            seq, images = s.seq, s.seq.images
            begin, n = seq.num_computed_tokens, s.num_new_tokens
            first_row = last_row[id(s)] - n + 1
            lo, hi = bisect.bisect_left(images.rows, begin), bisect.bisect_left(images.rows, begin + n)
            if lo < hi:
                rows = torch.tensor(images.rows[lo:hi], device=embeds.device) - begin + first_row
                mine = images.embeddings[lo:hi].to(embeds.dtype)
                embeds[rows] = mine[:, 0] if self.deepstack else mine
                image_rows.append(rows)
                deepstack.append(mine[:, 1:])
            if rope is not None:
                rope[:, first_row: first_row + n] = _rope_positions(images, begin, n).to(rope.device)
            if begin + n >= images.end:
                seq.release_image_embeddings()
        position_ids = torch.cat([positions[None], rope])[:, None] if rope is not None else positions[None]
        inputs = {"inputs_embeds": embeds[None], "position_ids": position_ids}
        if self.deepstack and image_rows:
            inputs |= _deepstack_inputs(len(input_ids), torch.cat(image_rows), torch.cat(deepstack))
        return inputs

    @staticmethod
    def _reaches_images(s: ScheduledSequence) -> bool:
        """This step's chunk holds some of the sequence's placeholder tokens."""
        begin, rows = s.seq.num_computed_tokens, s.seq.images.rows
        return bisect.bisect_left(rows, begin) < bisect.bisect_left(rows, begin + s.num_new_tokens)


def _rope_positions(images: PromptImages, begin: int, n: int) -> torch.Tensor:
    """Multimodal RoPE positions [3, n] of tokens begin..begin+n: the prompt's own, then each generated token's
    index shifted by the prompt's delta."""
    index = torch.arange(begin, begin + n)
    out = (index + images.rope_delta).expand(3, -1).clone()
    prompt_len = images.rope_positions.shape[1]
    if begin < prompt_len:
        out[:, : prompt_len - begin] = images.rope_positions[:, begin: begin + n]
    return out


def _deepstack_inputs(num_rows: int, rows: torch.Tensor, features: torch.Tensor) -> dict:
    """The text model's deepstack inputs for the packed rows that got image embeddings (features [rows, layers,
    hidden], row k's for rows[k]): the rows as a mask, and per layer their features in the rows' order (which
    need not be the schedule's: the triton packing puts a one-token chunk among the decode tokens)."""
    mask = torch.zeros(1, num_rows, dtype=torch.bool, device=rows.device)
    mask[0, rows] = True
    return {"visual_pos_masks": mask, "deepstack_visual_embeds": list(features[rows.argsort()].unbind(1))}


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Several prompts' inputs of one kind in one batch along the first dimension, the others zero-padded to the
    largest (the families' own padding: Pixtral crops each image to its image_sizes, Idefics3 drops all-zero
    sub-images and masks the padded pixels)."""
    shape = [max(sizes) for sizes in zip(*(t.shape[1:] for t in tensors))]
    padded = []
    for t in tensors:
        pad = [p for size, most in zip(reversed(t.shape[1:]), reversed(shape)) for p in (0, most - size)]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)

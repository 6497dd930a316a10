"""The vision side of a multimodal checkpoint: its own processor, vision tower and projector.

`prepare` (any thread) runs the family's transformers processor on a prompt and its images: the image
processor's pixel values, each image's placeholder token repeated as often as the image has embeddings,
and, for multimodal RoPE, the family's own 3D positions (get_rope_index). The processor is built
for images alone, its output split image by image (engine.image_processors). An image's span runs from
its first placeholder to its last, with whatever the family writes between them (Pixtral's [IMG_BREAK]
after each row, Idefics3's sub-images with their <row_r_col_c> markers).

`step_inputs` (the engine thread) runs the vision tower for the sequences whose prefill chunk this step
reaches their images and that have no embeddings yet: each image the encoder cache does not hold, once, the
images in runs of at most max_num_encoder_tokens placeholders (a prompt's inputs split image by image), one call
each (the scheduler bounds a step's placeholder tokens by the same budget; the CUDA warm-up measures a run of the
largest images); puts the embeddings at the placeholders' rows of the packed batch (the model then takes
inputs_embeds); and gives multimodal RoPE its positions. Where the family's language model adds "deepstack"
features (Qwen3-VL: the vision tower's features from some of its layers, added to the image rows' hidden states
after the language model's first layers), each placeholder's features are kept beside its embedding (one tensor: released
and cached together), and the model is given the rows that got image embeddings this step with their
features. A sequence keeps its embeddings until its prefill has passed its last image (chunked prefill
may cut an image), then releases them; a preempted sequence takes them again when recomputed.
The encoder cache keeps image embeddings by content (the most recently used, up to the engine's
encoder_cache_tokens rows): an image it holds is not encoded again, so a repeated image, as in a follow-up
turn, runs through the vision tower once.

Families (checked against generate() by tests/engine/test_vision.py): Qwen2.5-VL (multimodal RoPE), Qwen3-VL and
Qwen3-VL-MoE (multimodal RoPE and deepstack), Qwen3.5 and Qwen3.6 (qwen3_5, qwen3_5_moe: multimodal RoPE, no
deepstack, a hybrid language model whose sequences also hold a state slot; a repeated image's prefix hit ends where
the states were kept, engine.state_snapshots), Mistral 3 (Pixtral's vision tower, images of any aspect ratio, given
with their image_sizes), Idefics3 and SmolVLM (each image split into sub-images, and the whole image beside them),
Llama 4 (each image cut into tiles and shrunk to one more, its processor the engine's: engine.llama4_images; the
projector applied to the tower's output here, as its multimodal forward does) and Gemma 3, whose image placeholders
attend to each other both ways: a prefill chunk then holds an image whole (the scheduler does not cut it,
engine.prompt_images) and its mask lets the image's tokens see each other (engine.packing: the torch path's masks,
the triton kernel's last key per query). The images of other families are refused, their text served.
"""

import bisect
import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from PIL import Image

from engine.encoder_cache import EncoderCache
from engine.errors import InvalidParameter
from engine.image_processors import (TEXT_INPUTS, image_content_hash, images_processor, largest_image_side,
                                     per_image_inputs)
from engine.prompt_images import ImageSpan, PromptImages
from engine.scheduler import ScheduledSequence
from engine.sequence import Sequence

# Model types whose images the engine runs (checked against generate() by tests/engine/test_vision.py).
IMAGE_FAMILIES = {"qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "gemma3", "mistral3", "idefics3",
                  "smolvlm", "llama4"}
BIDIRECTIONAL_IMAGES = {"gemma3"}  # families whose image placeholders attend to each other both ways
# Families whose language model adds the vision tower's features from some of its layers ("deepstack") to the
# image rows' hidden states after its first layers.
DEEPSTACK_IMAGES = {"qwen3_vl", "qwen3_vl_moe"}
# Families whose get_image_features gives the vision tower's output before the projector, which their multimodal
# forward applies (Llama 4: per tile, its patches pixel-shuffled by the tower's adapter)
PROJECTED_OUTSIDE = {"llama4"}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


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


@dataclass
class Vision:
    """A loaded checkpoint's vision side, beside its language model (which shares the multimodal model's modules)."""

    # the multimodal base model (Llama 4's: the multimodal model, which has no base model): get_image_features, and
    # get_rope_index for multimodal RoPE
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
        return cls(getattr(multimodal, "model", multimodal), processor, model_type, processor.image_token,
                   multimodal.config.image_token_id)

    def largest_image(self, index: int = 0) -> Image.Image:
        """A generated image of the largest size the image processor makes (a gradient: Idefics3 drops all-zero
        sub-images), each index's content its own (the same content is encoded once a step). The API's
        max_image_pixels may allow larger ones, which the processor resizes to this."""
        side = largest_image_side(self.model_type, self.processor.image_processor)
        return Image.linear_gradient("L").point(lambda v: (v + index) % 256).resize((side, side)).convert("RGB")

    def placeholder_bytes(self, dtype: torch.dtype) -> int:
        """What the encoder cache keeps per placeholder token: its embedding and deepstack features, of the language
        model's width."""
        width = self.model.get_input_embeddings().embedding_dim
        return vectors_per_placeholder(self.model.config.to_dict()) * width * dtype.itemsize

    @functools.cached_property
    def largest_image_tokens(self) -> int:
        """Placeholder tokens of the largest image: what the vision tower gives for it."""
        return len(self.prepare(self.image_token, [self.largest_image()])[1].rows)

    @contextlib.contextmanager
    def uncounted(self):
        """Encodes that are not images the engine was sent (the warm-up's): images_encoded stays as it was."""
        counted = self.images_encoded
        try:
            yield
        finally:
            self.images_encoded = counted

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
        encoder_inputs = per_image_inputs({k: v for k, v in inputs.items() if k not in TEXT_INPUTS}, counts)
        prompt_images = PromptImages(encoder_inputs, rows, spans, bidirectional=self.bidirectional)
        if self.multimodal_rope:
            positions, delta = self.model.get_rope_index(
                input_ids=ids[None], mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"))
            prompt_images.rope_positions, prompt_images.rope_delta = positions[:, 0], int(delta)
        return ids.tolist(), prompt_images

    # -- the engine thread ---------------------------------------------------------------------
    def encode(self, seqs: list[Sequence], device: torch.device, cache: EncoderCache, budget: int) -> None:
        """Each sequence's embeddings, image by image: those the cache holds from it, the others from the vision
        tower (an image in several of them once), in runs of at most `budget` placeholder tokens (a run's first
        image whatever its size), then cached. The runs bound the tower's activations by what the warm-up
        measured, however many images the sequences have together."""
        got: dict[int, torch.Tensor] = {}  # content hash -> the image's embeddings
        missing: dict[int, tuple[dict, int]] = {}  # content hash -> the tower's inputs, placeholder tokens
        for s in seqs:
            for span, inputs in zip(s.images.spans, s.images.encoder_inputs):
                if span.content_hash in got or span.content_hash in missing:
                    continue
                cached = cache.get(span.content_hash)
                if cached is not None:
                    got[span.content_hash] = cached
                else:
                    missing[span.content_hash] = (inputs, s.images.placeholders(span))
        for run in _runs(list(missing), [missing[h][1] for h in missing], budget):
            embeddings = self._run_tower([missing[h][0] for h in run], [missing[h][1] for h in run], device)
            for content_hash, mine in zip(run, embeddings):
                got[content_hash] = mine
                cache.put(content_hash, mine)
        self.images_encoded += len(missing)
        for s in seqs:
            s.images.embeddings = torch.cat([got[span.content_hash] for span in s.images.spans])

    def _run_tower(self, inputs: list[dict], placeholders: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """One call of the vision tower over these images (their inputs padded to one batch): each image's rows of
        embeddings (with deepstack, each row's embedding then its feature per deepstack layer). Pixel values go in at
        the tower's dtype (Llama 4's processor gives bfloat16; not every tower casts them itself)."""
        batch = {k: _stacked([i[k] for i in inputs]).to(device) for k in inputs[0]}
        batch = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in batch.items()}
        output = self.model.get_image_features(**batch)
        if self.model_type in PROJECTED_OUTSIDE:  # [tiles, tokens, width]: projected here, as the multimodal forward does
            return self.model.multi_modal_projector(output.last_hidden_state.flatten(0, 1)).split(placeholders)
        # one [tokens, hidden] per image, or per sub-image (a tuple, or [images, tokens, hidden]), in order
        rows = torch.cat(list(output.pooler_output))
        if self.deepstack:
            rows = torch.stack([rows, *(torch.cat(list(layer)) for layer in output.deepstack_features)], dim=1)
        return rows.split(placeholders)

    def step_inputs(self, embed_tokens: torch.nn.Module, scheduled: list[ScheduledSequence], input_ids: torch.Tensor,
                    positions: torch.Tensor, last_row: dict, cache: EncoderCache, encoder_budget: int) -> dict:
        """The model's inputs for a packed step where some sequences have images: inputs_embeds [1, T, hidden],
        position_ids, and for deepstack the rows that got image embeddings (visual_pos_masks [1, T]) with their
        features per deepstack layer (deepstack_visual_embeds, in the rows' order)."""
        with_images = [s for s in scheduled if s.seq.images is not None]
        due = [s.seq for s in with_images if s.seq.images.embeddings is None and s.seq.images.reaches_placeholders(
            s.seq.num_computed_tokens, s.seq.num_computed_tokens + s.num_new_tokens)]
        if due:
            self.encode(due, input_ids.device, cache, encoder_budget)
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


def _runs(keys: list, sizes: list[int], budget: int) -> list[list]:
    """keys in order, in runs whose sizes add up to at most budget (a run's first whatever its size)."""
    runs, total = [], 0
    for key, size in zip(keys, sizes):
        if not runs or total + size > budget:
            runs.append([])
            total = 0
        runs[-1].append(key)
        total += size
    return runs


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

"""Turns one scheduled batch into logits: packs the tokens, runs the model, keeps the KV cache and the state slots.

Two attention backends share the packing: "torch" (portable, the reference for tests; CPU) and
"triton" (one paged kernel per layer, CUDA; decode steps replay CUDA graphs; Llama-family layers
rebuilt with merged projections and fused kernels, engine.fused_layers). A model with recurrent layers
also has a state slot per sequence that may run (engine.recurrent.states), allocated before the KV
cache and out of the same budget; its decode steps are not captured as CUDA graphs. A step with
sequences that have images (engine.vision) runs the vision tower where due and gives the model
inputs_embeds; it does not replay a CUDA graph.
"""

import contextlib
import logging

import torch

from engine.attention import ATTENTION_NAME
from engine.block_manager import NULL_BLOCK, blocks_for
from engine.config import CPU_KV_CACHE_BYTES, EngineConfig
from engine.errors import ModelLoadError
from engine.kv_cache_spec import max_tokens_per_sequence
from engine.lm_head import reuse_logits_buffer
from engine.loader import LoadedModel
from engine.overlap import fill_placeholders, to_device
from engine.packing import BatchPacker
from engine.recurrent import fla
from engine.recurrent.states import RecurrentStates
from engine.prompt_logprobs import prompt_rows
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledSequence
from engine.sequence import Sequence
from engine.encoder_cache import EncoderCache
from engine.state_spec import GATED_DELTA_NET, PREFIX_CACHING_OFF_FOR_RECURRENT, state_slots_for, state_snapshots_for

log = logging.getLogger(__name__)

GIB = 1 << 30


def kv_blocks_for_gpu(total: int, free: int, activation_peak: int, fraction: float, block_bytes: int, min_blocks: int,
                     encoder_cache: int = 0) -> int:
    """KV blocks that fit in the allowed share of the GPU (fraction of total) once what is already
    taken (weights, torch's cache, other processes: total - free), a full step's peak and, for a model
    that takes images, a full encoder cache are set aside."""
    in_use = total - free
    budget = int(total * fraction) - in_use - activation_peak - encoder_cache
    if budget // block_bytes < min_blocks:
        cache = f" - {encoder_cache / GIB:.2f} GiB for the encoder cache" if encoder_cache else ""
        raise ModelLoadError(
            f"only {max(budget, 0) / GIB:.2f} GiB of GPU memory is left for the KV cache ({total / GIB:.1f} GiB x "
            f"gpu_memory_fraction {fraction} - {in_use / GIB:.1f} GiB in use - {activation_peak / GIB:.2f} GiB for a "
            f"full step{cache}); at least {min_blocks * block_bytes / GIB:.2f} GiB is needed. Raise "
            "gpu_memory_fraction, lower max_num_batched_tokens" + (" or encoder_cache_tokens" if encoder_cache else "")
            + ", or free the GPU (nvidia-smi lists what holds it)"
        )
    return budget // block_bytes


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.model = loaded.model
        self.hf_config = loaded.config
        self.config = config
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        self.dtype = config.torch_dtype
        self.kv_dtype = torch.float8_e4m3fn if config.kv_cache_dtype == "fp8" else self.dtype
        self.weights = loaded.weights
        self.vision = loaded.vision
        self.encoder_cache = EncoderCache(config.encoder_cache_tokens)
        self.layout = loaded.layout
        self.experts = loaded.experts
        self.attention_features = loaded.attention_features
        self.placement = self.layout.placement()
        # One state slot per sequence that may run, and the snapshots prefix caching keeps (engine.state_snapshots);
        # before the KV cache, whose budget is what they leave.
        self.states = (RecurrentStates(loaded.states, state_slots_for(config.max_num_seqs, loaded.states), self.dtype,
                                       self.device, state_snapshots_for(config.num_state_snapshots, config.max_num_seqs,
                                                                        loaded.states, config.enable_prefix_caching))
                       if loaded.states else None)
        self.packer = BatchPacker(self.layout.specs(), self.block_size, self.device, self.dtype)
        self.fused = False
        self._use_backend(config.resolved_attention_backend)
        self.graphs = None
        if not config.on_cuda:  # on CUDA the caching allocator already reuses the logits' memory
            reuse_logits_buffer(self.model, config.max_num_seqs)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []  # allocated once their size is known
        # On CUDA a full-size step runs now: it compiles the kernels (not on the first request) and
        # measures the activation peak the KV sizing leaves room for.
        activation_peak = self._cuda_warm_up() if config.on_cuda else 0
        self.num_blocks = self._num_blocks(activation_peak)
        model_len = config.max_model_len or getattr(self.hf_config, "max_position_embeddings", 2048)
        self.max_model_len = max_tokens_per_sequence(self.layout.specs(), self.block_size, self.num_blocks,
                                                     config.max_num_batched_tokens, model_len)
        # Block 0 is the null block (engine.block_manager): freed window entries point at it, and CUDA
        # graph replays write their padding rows' keys into it.
        self.kv_caches = self._allocate(self.num_blocks + 1)
        if config.cuda_graphs and config.on_cuda and self.backend == "triton" and self.states is None:
            from engine.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs.capture(self, padding_block=NULL_BLOCK)

    @property
    def max_num_encoder_tokens(self) -> int | None:
        """Placeholder tokens the vision tower may run over in a step (engine.scheduler): the setting, or the larger
        of max_num_batched_tokens and the largest image's; None for a model that takes no images."""
        if self.vision is None:
            return None
        return self.config.max_num_encoder_tokens or max(self.config.max_num_batched_tokens,
                                                         self.vision.largest_image_tokens)

    def _use_backend(self, backend: str) -> None:
        self.backend = backend
        if backend == "triton":
            from engine.triton_attention import ATTENTION_NAME as TRITON_ATTENTION_NAME

            self.attention_name = TRITON_ATTENTION_NAME
            if self.config.fused_layers and not self.fused:
                from engine.fused_layers import fuse_layers

                self.fused = fuse_layers(self.model)
        else:
            self.attention_name = ATTENTION_NAME
        self.model.set_attn_implementation(self.attention_name)
        if self.fused:
            from engine.fused_layers import use_fused_kernels

            use_fused_kernels(self.model, backend == "triton")

    def _cuda_warm_up(self) -> int:
        """The activation peak of a full step; where the triton backend was picked automatically and
        fails on this GPU (a Triton that does not support it, say), the torch backend takes over."""
        try:
            return self._cuda_activation_peak()
        except Exception as e:
            if self.config.attention_backend != "auto" or self.backend != "triton":
                raise
            log.warning("the triton attention backend failed on this GPU; using the torch backend: %s", e)
            self._use_backend("torch")
            return self._cuda_activation_peak()

    def execution(self) -> dict:
        """What runs the model, for operators asking whether the fast path is on (the triton backend
        may have handed over to torch at load, graph capture may have failed)."""
        return {"device": str(self.device), "dtype": self.config.resolved_dtype, "attention_backend": self.backend,
                "fused_layers": self.fused, "cuda_graphs": self.graphs is not None,
                "async_scheduling": self.config.overlaps_steps, "experts": self.experts or "none",
                "attention": ",".join(self.attention_features) or "full", "kv_cache": self.layout.describe(),
                "kv_cache_dtype": str(self.kv_dtype).removeprefix("torch."),
                "state_slots": self.state_slots_text(), "recurrent": self.recurrent_kernels,
                "prefix_caching": self.prefix_caching,
                "images": f"{self.vision.model_type} vision tower" if self.vision is not None else "none",
                "max_num_encoder_tokens": self.max_num_encoder_tokens,
                **(self.weights.to_dict() if self.weights else {})}

    @property
    def recurrent_kernels(self) -> str:
        """What runs the recurrent layers: "fla" (Gated DeltaNet on CUDA where fla-core is installed), "torch", or
        "none" for a transformer."""
        if self.states is None:
            return "none"
        kinds = {spec.kind for _, spec in self.states.layout.layers}
        return "fla" if GATED_DELTA_NET in kinds and fla.runs_on(self.device) else "torch"

    def state_slots_text(self) -> str:
        """E.g. "64 slots of 62.8 MiB (30 Gated DeltaNet layers)"; "none" for a transformer."""
        if self.states is None:
            return "none"
        return (f"{self.states.num_slots} slots of {self.states.row_bytes / (1 << 20):.1f} MiB "
                f"({self.states.layout.describe()})")

    @property
    def caches_prefixes(self) -> bool:
        """Whether prefix caching runs: configured on and, for a model with recurrent layers, with state snapshots."""
        return self.config.enable_prefix_caching and (self.states is None or self.states.num_snapshots > 0)

    @property
    def prefix_caching(self) -> str:
        """"on", "on (state snapshots: N)" for a model with recurrent layers, "off" (configured so), or off with the
        reason where no snapshots rule it out."""
        if not self.config.enable_prefix_caching:
            return "off"
        if self.states is None:
            return "on"
        if self.caches_prefixes:
            return f"on (state snapshots: {self.states.num_snapshots})"
        return PREFIX_CACHING_OFF_FOR_RECURRENT

    @property
    def kv_cache_bytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.kv_caches)

    @property
    def state_bytes(self) -> int:
        """The state slots' and snapshots' memory (0 without recurrent layers)."""
        return self.states.nbytes if self.states is not None else 0

    def _allocate(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One key and one value tensor per layer of the largest group: tensor j serves each group's j-th layer."""
        shape = (num_blocks, self.block_size, self.layout.kv_heads, self.layout.head_dim)
        return [
            (torch.zeros(shape, dtype=self.kv_dtype, device=self.device),
             torch.zeros(shape, dtype=self.kv_dtype, device=self.device))
            for _ in range(self.layout.layers_per_group)
        ]

    def _num_blocks(self, activation_peak: int) -> int:
        config = self.config
        per_block = self.layout.block_bytes(config.block_size, self.kv_dtype.itemsize)
        if config.num_kv_blocks:
            return config.num_kv_blocks
        if config.kv_cache_bytes is not None or not config.on_cuda:
            budget = (config.kv_cache_bytes or CPU_KV_CACHE_BYTES) - self.state_bytes
            if self.states is not None and budget < 2 * per_block:
                raise ModelLoadError(
                    f"the KV cache budget ({(budget + self.state_bytes) / GIB:.2f} GiB) does not hold the state slots "
                    f"({self.state_slots_text()}) and {self.states.num_snapshots} snapshots ({self.state_bytes / GIB:.2f} "
                    "GiB in all) and two KV blocks; raise kv_cache_bytes, or lower max_num_seqs or num_state_snapshots")
            return max(1, budget // per_block - 1)
        free, total = torch.cuda.mem_get_info(self.device)
        blocks = kv_blocks_for_gpu(total, free, activation_peak, config.gpu_memory_fraction, per_block,
                                   min_blocks=blocks_for(config.max_num_batched_tokens, config.block_size)
                                   * len(self.layout.groups) + 1, encoder_cache=self.encoder_cache_bytes) - 1
        log.info("KV cache: %.2f GiB (%d blocks of %s); a full step peaks at %.2f GiB; the encoder cache may hold "
                 "%.2f GiB", blocks * per_block / GIB, blocks, self.layout.describe(), activation_peak / GIB,
                 self.encoder_cache_bytes / GIB)
        return blocks

    @property
    def encoder_cache_bytes(self) -> int:
        """What a full encoder cache holds (encoder_cache_tokens placeholders' embeddings, with their deepstack
        features): the warm-up leaves it empty, so the KV sizing sets it aside; 0 for a model that takes no images."""
        if self.vision is None:
            return 0
        return self.config.encoder_cache_tokens * self.vision.placeholder_bytes(self.dtype)

    def _cuda_activation_peak(self) -> int:
        """GPU memory a full step adds on top of the weights, measured by running one."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        scratch_bytes = self.warm_up()
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - before - scratch_bytes
        torch.cuda.empty_cache()
        return peak

    def warm_up(self) -> int:
        """Run one step as large as the scheduler allows on a scratch KV cache and encoder cache; returns the scratch
        KV cache's bytes. Where the model takes images, the step's first sequence holds the encoder budget's worth
        of the largest image the processor makes (engine.vision), so the vision tower runs over them and their
        placeholders are in the batch; max_num_batched_tokens prompt tokens in all, over as many sequences as may
        run. The images are not counted in images_encoded."""
        tokens, seqs = self.config.max_num_batched_tokens, []
        if self.vision is not None:
            seqs.append(self._warm_up_images(tokens))
        left = tokens - sum(num_new for _, num_new in seqs)
        num_text = min(self.config.max_num_seqs - len(seqs), left)
        seqs += [(Sequence(f"warm-up-{i}", [0] * (left // num_text), SamplingParams(max_tokens=1)), left // num_text)
                 for i in range(num_text)]
        saved, saved_encoder_cache = self.kv_caches, self.encoder_cache
        groups = len(self.layout.groups)
        self.kv_caches = self._allocate(1 + groups * sum(blocks_for(n, self.block_size) for _, n in seqs))
        self.encoder_cache = EncoderCache(0)
        scratch_bytes = self.kv_cache_bytes
        batch, block = [], 1
        for slot, (seq, num_new) in enumerate(seqs):
            seq.state_slot = slot if self.states is not None else None  # no sequence runs yet: every slot is free
            blocks_each = blocks_for(num_new, self.block_size)
            seq.block_tables = [list(range(block + g * blocks_each, block + (g + 1) * blocks_each)) for g in range(groups)]
            block += groups * blocks_each
            batch.append(ScheduledSequence(seq, num_new))
        try:
            with self.vision.uncounted() if self.vision is not None else contextlib.nullcontext():
                self.execute(batch)
        finally:
            self.kv_caches, self.encoder_cache = saved, saved_encoder_cache
        return scratch_bytes

    def _warm_up_images(self, tokens: int) -> tuple[Sequence, int]:
        """A sequence of as many of the largest images as the encoder budget takes (one at least), and its first
        chunk within `tokens`: it reaches the images (Gemma 3's first image whole if the budget ends before it, as
        the scheduler takes it)."""
        vision = self.vision
        count = max(1, self.max_num_encoder_tokens // vision.largest_image_tokens)
        # a space between the images: Qwen's multimodal RoPE tells images apart by the text between them
        ids, images = vision.prepare(" ".join([vision.image_token] * count),
                                     [vision.largest_image(i) for i in range(count)])
        seq = Sequence("warm-up-images", ids, SamplingParams(max_tokens=1), images)
        num_new = seq.prefill_chunk(0, tokens)
        return seq, num_new if images.reaches_placeholders(0, num_new) else images.spans[0].end

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> list[float]:
        """Mean-pooled last hidden state of one prompt; uses no KV cache."""
        self.model.set_attn_implementation("sdpa")
        try:
            hidden = self.model.model(input_ids=torch.tensor([token_ids], device=self.device), use_cache=False)
        finally:
            self.model.set_attn_implementation(self.attention_name)
        return hidden.last_hidden_state[0].float().mean(0).tolist()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta, logits_to_keep) -> torch.Tensor:
        """Logits [rows, vocab] for the packed tokens; logits_to_keep: row indices, or 0 for all rows."""
        output = self.model(
            input_ids=input_ids[None],
            position_ids=positions[None],
            attention_metadata=meta,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        )
        return output.logits[0]

    def forward_with_images(self, scheduled: list[ScheduledSequence], input_ids: torch.Tensor, positions: torch.Tensor,
                            meta, last_row: dict, logits_to_keep) -> torch.Tensor:
        """forward() for a step where some sequences have images: their embeddings at the placeholders (and, for
        deepstack, their features added after the language model's first layers)."""
        inputs = self.vision.step_inputs(self.model.get_input_embeddings(), scheduled, input_ids, positions, last_row,
                                         self.encoder_cache, self.max_num_encoder_tokens)
        output = self.model(**inputs, attention_metadata=meta, use_cache=False, logits_to_keep=logits_to_keep)
        return output.logits[0]

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSequence], previous_tokens: torch.Tensor | None = None,
                state_copies: list[tuple[int, int]] = ()) -> torch.Tensor:
        """Logits [n, vocab] for the scheduled sequences that complete their known tokens, in order; then
        the rows that give prompt logprobs (engine.prompt_logprobs), sequence by sequence.

        previous_tokens: the previous step's sampled ids, still on the device, which the placeholders
        of its tokens stand for (engine.overlap). state_copies: recurrent state rows to copy first, in
        order (engine.state_snapshots: snapshots kept of the last step's states, and restored into slots)."""
        if state_copies:
            self.states.copy(state_copies)
        pack = self.packer.triton_batch if self.backend == "triton" else self.packer.torch_batch
        input_ids, positions, meta, last_row = pack(scheduled, self.kv_caches, self.placement, self.states)
        if previous_tokens is not None:
            input_ids = fill_placeholders(input_ids, previous_tokens)
        keep = [last_row[id(s)] for s in scheduled if s.completes_prompt]
        keep += [row for s in scheduled if s.seq.params.prompt_logprobs is not None
                 for row in prompt_rows(s, last_row[id(s)])]
        rows = to_device(torch.tensor(keep or [0]), self.device)
        if self.vision is not None and any(s.seq.images is not None for s in scheduled):
            logits = self.forward_with_images(scheduled, input_ids, positions, meta, last_row, rows)
            return logits if keep else logits[:0]
        if self.graphs is not None and self.graphs.fits(meta):
            return self.graphs.replay(input_ids, positions, meta)[rows]
        logits = self.forward(input_ids, positions, meta, rows)
        return logits if keep else logits[:0]  # the model needs at least one row; the caller expects none

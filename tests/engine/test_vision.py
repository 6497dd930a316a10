"""Images in the engine: tiny random Qwen2.5-VL (multimodal RoPE), Qwen3-VL and Qwen3-VL-MoE (and deepstack features
added in the language model's first layers), Qwen3.5 and Qwen3.6 (qwen3_5, qwen3_5_moe: Qwen3-VL's vision tower
before a hybrid language model, Gated DeltaNet layers on state slots beside attention), Mistral 3 (Pixtral: an
image's placeholders broken by a token after each row), Idefics3 and SmolVLM (an image split into sub-images, with
text between them), Llama 4 (an image cut into tiles, the engine's own image processor) and Gemma 3 (image
placeholders that attend to each other both ways) give generate()'s greedy tokens for prompts with images, in one
batch with text-only requests, with several prompts' images of different sizes encoded in one call, under chunked
prefill (Qwen's images cut between chunks, Gemma's never), and a repeated image is found in the prefix cache and the
encoder cache (Qwen3-VL's deepstack features with its embeddings), while a different image behind the same token ids
is not (the hybrids' hits end where their states were kept, after the prompt's last whole block); images past the
encoder budget are encoded in a later step, and the warm-up step runs the vision tower on scratch state
(Qwen2.5-VL)."""

import functools

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.errors import InvalidParameter
from engine.encoder_cache import EncoderCache
from tests.engine.vision_models import FAMILIES, build_vlm, generate_alone, image, reference

BLOCK = 4
BUDGET = 8  # tokens per step: an image of 8 placeholders starting mid-block spans two chunks
N = 6


# Each family runs the checks where it differs from the others, to keep the suite's time: Qwen3.5 is Qwen3.6 but for
# its MLP (it runs the first check alone), and Qwen3.6 and Qwen3-VL-MoE differ from Qwen3-VL in their language model,
# not in what the vision side and the scheduler alone decide (several prompts' images in one call, images one by one
# within the encoder budget, the refusals).
EVERY = sorted(FAMILIES)
LANGUAGE_MODELS = [f for f in EVERY if f != "qwen3_5"]
VISION_SIDES = [f for f in EVERY if f not in ("qwen3_5", "qwen3_5_moe", "qwen3_vl_moe")]


@pytest.fixture(scope="module")
def vlms(default_model_path, tmp_path_factory):
    """family -> (folder, the reference model, its processor, the family's image placeholder), each built once, when
    first asked for (the tests' family lists differ, so that pytest would not keep a parametrized fixture's instance
    from one test to the next)."""

    @functools.cache
    def vlm(family: str) -> tuple:
        folder = build_vlm(family, tmp_path_factory.mktemp(family), default_model_path)
        model, processor = reference(folder)
        return folder, model, processor, FAMILIES[family].image

    return vlm


@pytest.fixture
def vlm(request, vlms):
    return vlms(request.param)


def make_engine(folder, budget: int = BUDGET, **settings) -> Engine:
    engine = Engine(EngineConfig(dtype="float32", block_size=BLOCK, max_num_batched_tokens=budget, max_num_seqs=4,
                                 num_kv_blocks=64, **settings))
    engine.load_model(folder)
    return engine


def run(engine: Engine, requests: dict) -> dict:
    """requests: id -> (prompt, images); all added at once, run to the end; id -> greedy tokens."""
    for request_id, (prompt, images) in requests.items():
        params = SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True)
        if images:
            ids, prompt_images = engine.prepare_images(prompt, images)
            engine.add_request(request_id, ids, params, images=prompt_images)
        else:
            engine.add_request(request_id, prompt, params)
    tokens = {request_id: [] for request_id in requests}
    cached = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            cached[out.request_id] = out.num_cached_tokens
    assert all(s.images is None or s.images.embeddings is None for s in engine.sequences.values())
    return tokens, cached


@pytest.mark.parametrize("vlm", EVERY, indirect=True)
def test_images_batched_with_text_give_generates_tokens(vlm):
    folder, model, processor, placeholder = vlm
    requests = {
        "wide": (f"Describe {placeholder} briefly please", [image(1)]),
        "text": ("Only words in this one, no pictures at all", []),
        "two": (f"First {placeholder} then {placeholder}, compare them", [image(2, 56, 56), image(3, 28, 84)]),
    }
    expected = {k: generate_alone(model, processor, p, images, N) for k, (p, images) in requests.items()}
    got, _ = run(make_engine(folder), requests)
    assert got == expected
    assert len({tuple(t) for t in got.values()}) == 3  # decisive: the three answers differ


@pytest.mark.parametrize("vlm", ["gemma3", "qwen3_vl", "qwen3_5_moe"], indirect=True)
def test_images_on_the_triton_backend_give_generates_tokens(vlm):
    """The CUDA attention path (Triton's interpreter here): the packed batch in schedule order (decodes before
    later prefill chunks), Gemma 3's images seeing each other through the kernel's last key per query, Qwen3-VL's
    multimodal RoPE positions and deepstack rows in that order, Qwen3.6's recurrent layers beside them. (The other
    families differ from these in what the torch path checks alone.)"""
    folder, model, processor, placeholder = vlm
    requests = {
        "text": ("Only words in this one, no pictures at all", []),
        "wide": (f"Describe {placeholder} briefly please", [image(1)]),
    }
    engine = make_engine(folder, attention_backend="triton")
    assert engine.takes_images and engine.stats().execution["attention_backend"] == "triton"
    got, _ = run(engine, requests)
    assert got == {k: generate_alone(model, processor, p, images, N) for k, (p, images) in requests.items()}


@pytest.mark.parametrize("vlm", VISION_SIDES, indirect=True)
def test_several_prompts_images_of_different_sizes_encoded_together_give_generates_tokens(vlm):
    """A budget that takes both prompts whole: the first step encodes their three images in one call, their inputs
    padded to one batch (Pixtral's and Idefics3's pixel values differ in size between prompts)."""
    folder, model, processor, placeholder = vlm
    requests = {
        "wide": (f"Describe {placeholder} briefly please", [image(1)]),
        "two": (f"First {placeholder} then {placeholder}, compare them", [image(2, 56, 56), image(3, 28, 84)]),
    }
    engine = make_engine(folder, budget=256)
    vision = engine.session.runner.vision
    for request_id, (prompt, images) in requests.items():
        ids, prompt_images = engine.prepare_images(prompt, images)
        engine.add_request(request_id, ids, SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True),
                           images=prompt_images)
    tokens = {request_id: [] for request_id in requests}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
        assert vision.images_encoded == 3
    assert tokens == {k: generate_alone(model, processor, p, images, N) for k, (p, images) in requests.items()}


@pytest.mark.parametrize("vlm", ["qwen2_5_vl"], indirect=True)
def test_images_past_the_encoder_budget_are_encoded_in_a_later_step_and_give_generates_tokens(vlm):
    """A token budget that takes both prompts whole, an encoder budget of the first prompt's image: the second
    prompt's text runs beside it, and its two images are encoded in the next step."""
    folder, model, processor, placeholder = vlm
    requests = {
        "wide": (f"Describe {placeholder} briefly please", [image(1)]),
        "two": (f"First {placeholder} then {placeholder}, compare them", [image(2, 56, 56), image(3, 28, 84)]),
    }
    engine = make_engine(folder, budget=256, max_num_encoder_tokens=8)
    vision = engine.session.runner.vision
    for request_id, (prompt, images) in requests.items():
        ids, prompt_images = engine.prepare_images(prompt, images)
        assert len(prompt_images.rows) == {"wide": 8, "two": 4 + 3}[request_id]  # merged 28 x 28 patches
        engine.add_request(request_id, ids, SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=True),
                           images=prompt_images)
    tokens = {request_id: [] for request_id in requests}
    encoded = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
        encoded.append(vision.images_encoded)
    assert encoded[:3] == [1, 3, 3]
    assert tokens == {k: generate_alone(model, processor, p, images, N) for k, (p, images) in requests.items()}


@pytest.mark.parametrize("vlm", ["qwen2_5_vl"], indirect=True)
def test_the_warm_up_step_runs_the_vision_tower_on_scratch_state_and_the_engine_still_gives_generates_tokens(vlm):
    """The CUDA warm-up's step (run here on CPU): the encoder budget's worth of the largest image the processor
    makes goes through the vision tower; the KV cache, the encoder cache and images_encoded are as they were."""
    folder, model, processor, placeholder = vlm
    engine = make_engine(folder)
    runner = engine.session.runner
    prompt = f"Describe {placeholder} briefly please"
    run(engine, {"before": (prompt, [image(1)])})
    kv = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    cache = dict(runner.encoder_cache.entries)
    encoded = []
    hook = runner.vision.model.visual.register_forward_hook(
        lambda module, args, output: encoded.append(len(output.pooler_output)))
    try:
        runner.warm_up()
    finally:
        hook.remove()
    largest = runner.vision.largest_image_tokens
    assert largest >= 4  # the test processor's largest square image: 56 x 56 pixels, 2 x 2 merged patches
    assert encoded == [runner.max_num_encoder_tokens // largest * largest]
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(runner.kv_caches, kv))
    assert runner.encoder_cache.entries == cache and runner.vision.images_encoded == 1
    requests = {"again": (prompt, [image(1)]), "other": (f"First {placeholder} then say", [image(2, 56, 56)])}
    got, _ = run(engine, requests)
    assert got == {k: generate_alone(model, processor, p, images, N) for k, (p, images) in requests.items()}
    assert runner.vision.images_encoded == 2  # "again" came from the encoder cache


@pytest.mark.parametrize("vlm", ["llama4"], indirect=True)
def test_llama4s_largest_image_fills_its_square_of_tiles_and_the_warm_up_step_runs_it(vlm):
    """Llama 4's largest image is the square of tiles that max_patches allows (the test processor's: 2 x 2 tiles of 56
    pixels and the whole image as one more, 5 tiles of 4 placeholders); the warm-up step runs the tower over it."""
    folder, model, processor, placeholder = vlm
    engine = make_engine(folder)
    runner = engine.session.runner
    assert runner.vision.largest_image().size == (112, 112)
    assert runner.vision.largest_image_tokens == 5 * 4
    runner.warm_up()
    assert runner.vision.images_encoded == 0
    prompt = f"Describe {placeholder} briefly please"
    got, _ = run(engine, {"r": (prompt, [image(1)])})
    assert got["r"] == generate_alone(model, processor, prompt, [image(1)], N)


@pytest.mark.parametrize("vlm", VISION_SIDES, indirect=True)
def test_a_prompts_images_are_encoded_one_by_one_within_the_encoder_budget_and_a_repeated_one_once(vlm):
    """The family's processor output split image by image (Qwen's patch rows by grid, Idefics3's sub-images, Pixtral's
    padded pixels with their sizes, Gemma's): with a budget of one placeholder each image runs through the tower
    alone, the image given twice once; the tokens are generate()'s."""
    folder, model, processor, placeholder = vlm
    engine = make_engine(folder, budget=256, max_num_encoder_tokens=1)
    vision = engine.session.runner.vision
    calls = []
    tower = next(getattr(vision.model, n) for n in ("visual", "vision_tower", "vision_model") if hasattr(vision.model, n))
    hook = tower.register_forward_hook(lambda module, args, output: calls.append(1))
    prompt = f"First {placeholder} then {placeholder} and {placeholder} again, compare"
    images = [image(2, 56, 56), image(3, 28, 84), image(2, 56, 56)]
    try:
        got, _ = run(engine, {"three": (prompt, images)})
    finally:
        hook.remove()
    assert len(calls) == vision.images_encoded == 2
    assert got["three"] == generate_alone(model, processor, prompt, images, N)


@pytest.mark.parametrize("vlm", LANGUAGE_MODELS, indirect=True)
def test_an_image_across_a_chunk_boundary_gives_generates_tokens(vlm):
    """Prompts alone, their images at shifting offsets, so that budget-sized chunks would cut some (Qwen's are
    cut; Gemma's are not: the chunk ends before the image, or holds it whole)."""
    folder, model, processor, placeholder = vlm
    engine = make_engine(folder)
    cut = 0
    for words in range(1, 5):
        prompt = " ".join(["look"] * words) + f" {placeholder} then say what"
        span = engine.prepare_images(prompt, [image(6)])[1].spans[0]
        cut += span.start // BUDGET != (span.end - 1) // BUDGET
        got, _ = run(engine, {"alone": (prompt, [image(6)])})
        assert got["alone"] == generate_alone(model, processor, prompt, [image(6)], N)
    assert cut  # decisive: at least one image straddles a chunk boundary


@pytest.mark.parametrize("vlm", LANGUAGE_MODELS, indirect=True)
def test_a_repeated_image_hits_the_prefix_cache_and_another_image_does_not(vlm):
    folder, model, processor, placeholder = vlm
    engine = make_engine(folder)
    prompt = f"A long enough preamble before the image {placeholder} then say what"
    first, second = image(4), image(5)  # the same size: the same token ids
    ids_first, images_first = engine.prepare_images(prompt, [first])
    assert engine.prepare_images(prompt, [second])[0] == ids_first
    image_start = images_first.spans[0].start

    run(engine, {"first": (prompt, [first])})
    got, cached = run(engine, {"again": (prompt, [first]), "other": (prompt, [second])})
    assert engine.session.runner.vision.images_encoded == 2  # the repeated image came from the encoder cache
    assert got["again"] == generate_alone(model, processor, prompt, [first], N)
    assert got["other"] == generate_alone(model, processor, prompt, [second], N)
    assert got["again"] != got["other"]
    # the image's blocks came from the cache (a hybrid's, Qwen3.5's, with the states kept after them)
    assert cached["again"] >= images_first.spans[0].end
    assert cached["other"] <= image_start  # only the blocks before the image are shared
    # What the CUDA KV sizing sets aside for a full encoder cache is what a cached placeholder takes (its deepstack
    # features with it).
    runner, kept = engine.session.runner, engine.session.runner.encoder_cache.get(images_first.spans[0].content_hash)
    assert runner.encoder_cache_bytes == engine.config.encoder_cache_tokens * kept.nbytes // len(kept)


@pytest.mark.parametrize("vlm", VISION_SIDES, indirect=True)
def test_images_are_refused_by_a_text_model_and_must_match_the_placeholders(vlm, tiny_model_path):
    folder, _, _, placeholder = vlm
    text = Engine(EngineConfig(dtype="float32", num_kv_blocks=16))
    text.load_model(tiny_model_path)
    assert not text.takes_images
    with pytest.raises(InvalidParameter, match="takes no images") as refused:
        text.prepare_images("hi", [image(1)])
    assert refused.value.param == "images"
    engine = make_engine(folder)
    assert engine.takes_images and engine.stats().execution["images"].endswith("vision tower")
    with pytest.raises(InvalidParameter, match="1 times for 2 images"):
        engine.prepare_images(f"one {placeholder}", [image(1), image(2)])
    vision = engine.session.runner.vision
    typed = vision.processor.tokenizer.convert_ids_to_tokens(vision.placeholder_id)  # Gemma's is not its image token
    with pytest.raises(InvalidParameter, match="placeholder") as refused:
        engine.prepare_images(f"one {placeholder} and {typed} typed", [image(1)])
    assert refused.value.param == "prompt"


def test_the_encoder_cache_keeps_the_most_recently_used_images_within_its_bound():
    cache = EncoderCache(max_tokens=10)
    cache.put(1, torch.zeros(4, 2))
    cache.put(2, torch.zeros(4, 2))
    assert cache.get(1) is not None  # 1 is now the most recently used
    cache.put(3, torch.zeros(4, 2))  # 12 rows: 2 goes
    cache.put(4, torch.zeros(11, 2))  # more than the bound: never kept
    assert list(cache.entries) == [1, 3] and cache.tokens == 8 and cache.get(2) is None
    with pytest.raises(InvalidParameter, match="encoder_cache_tokens"):
        EngineConfig(encoder_cache_tokens=-1)

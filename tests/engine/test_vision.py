"""Images in the engine: tiny random Qwen2.5-VL (multimodal RoPE), Qwen3-VL (and deepstack features added in its
language model's first layers), Mistral 3 (Pixtral: an image's placeholders broken by a token after each row),
Idefics3 and SmolVLM (an image split into sub-images, with text between them) and Gemma 3 (image placeholders that
attend to each other both ways) give generate()'s greedy tokens for prompts with images, in one batch with
text-only requests, with several prompts' images of different sizes encoded in one call, under chunked prefill
(Qwen's images cut between chunks, Gemma's never), and a repeated image is found in the prefix cache and the
encoder cache (Qwen3-VL's deepstack features with its embeddings), while a different image behind the same token
ids is not."""

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.errors import InvalidParameter
from engine.vision import EncoderCache
from tests.engine.vision_models import FAMILIES, build_vlm, generate_alone, image, reference

BLOCK = 4
BUDGET = 8  # tokens per step: an image of 8 placeholders starting mid-block spans two chunks
N = 6


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def vlm(request, default_model_path, tmp_path_factory):
    """(folder, the reference model, its processor, the family's image placeholder)."""
    folder = build_vlm(request.param, tmp_path_factory.mktemp(request.param), default_model_path)
    model, processor = reference(folder)
    return folder, model, processor, FAMILIES[request.param].image


def make_engine(folder, budget: int = BUDGET) -> Engine:
    engine = Engine(EngineConfig(dtype="float32", block_size=BLOCK, max_num_batched_tokens=budget, max_num_seqs=4,
                                 num_kv_blocks=64))
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
    assert cached["again"] >= images_first.spans[0].end  # the image's blocks came from the cache
    assert cached["other"] <= image_start  # only the blocks before the image are shared


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

"""The encoder budget: the placeholder tokens the vision tower runs over in a step are bounded, the step's first
images run whatever their size, and images the encoder cache holds cost nothing."""

import pytest

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.errors import InvalidParameter
from engine.prompt_images import ImageSpan, PromptImages
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence

BLOCK = 4


def with_image(request_id: str, content_hash: int, bidirectional: bool = False) -> Sequence:
    """Eight prompt tokens, an image of four placeholders at tokens 4..7."""
    images = PromptImages([{}], [4, 5, 6, 7], [ImageSpan(4, 8, content_hash)], bidirectional=bidirectional)
    return Sequence(request_id, list(range(8)), SamplingParams(), images)


def run_step(sched: Scheduler, cache: set[int]) -> tuple[list[tuple[str, int]], int]:
    """One step as the engine runs it (engine.vision: a sequence whose chunk reaches its images and that holds no
    embeddings gets them all, those the encoder cache does not hold encoded; they are released once the prefill
    has passed them): what was scheduled, and the placeholder tokens encoded."""
    plan = sched.schedule()
    encoded = 0
    for s in plan.scheduled:
        seq, images, begin = s.seq, s.seq.images, s.seq.num_computed_tokens
        if images.embeddings is None and images.reaches_placeholders(begin, begin + s.num_new_tokens):
            encoded += sum(images.placeholders(span) for span in images.spans if span.content_hash not in cache)
            cache.update(span.content_hash for span in images.spans)
            images.embeddings = "embeddings"
        completes = s.completes_prompt
        seq.num_computed_tokens += s.num_new_tokens
        if seq.num_computed_tokens >= images.end:
            seq.release_image_embeddings()
        if completes:
            seq.append_token(1)
    return [(s.seq.request_id, s.num_new_tokens) for s in plan.scheduled], encoded


def make_scheduler(encoder_budget: int, cache: set[int]) -> Scheduler:
    return Scheduler(BlockManager(64, BLOCK, enable_prefix_caching=False), max_num_seqs=8, max_num_batched_tokens=64,
                     max_waiting=100, max_num_encoder_tokens=encoder_budget, encoder_cached=cache.__contains__)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("encoder_budget", [2, 4, 7])
def test_images_past_the_encoder_budget_wait_for_a_later_step_while_the_text_before_them_runs(encoder_budget,
                                                                                             bidirectional):
    """Three prompts whose images would all be due in the first step: one image's worth a step (2: the step's
    first image runs though it is larger than the budget; 7: a second would pass it). The others' chunks end
    before their images (waiting or running), and a running one whose chunk starts at its image sits a step out."""
    cache: set[int] = set()
    sched = make_scheduler(encoder_budget, cache)
    for n, request_id in enumerate("abc"):
        sched.add(with_image(request_id, n, bidirectional))
    steps = [run_step(sched, cache) for _ in range(3)]
    assert steps == [
        ([("a", 8), ("b", 4), ("c", 4)], 4),
        ([("a", 1), ("b", 4)], 4),
        ([("a", 1), ("b", 1), ("c", 4)], 4),
    ]


def test_a_budget_of_two_images_encodes_two_a_step():
    cache: set[int] = set()
    sched = make_scheduler(8, cache)
    for n, request_id in enumerate("abc"):
        sched.add(with_image(request_id, n))
    assert run_step(sched, cache) == ([("a", 8), ("b", 8), ("c", 4)], 8)


def test_images_the_encoder_cache_holds_cost_nothing():
    cache = {1}  # b's image
    sched = make_scheduler(4, cache)
    for n, request_id in enumerate("abc"):
        sched.add(with_image(request_id, n))
    assert run_step(sched, cache) == ([("a", 8), ("b", 8), ("c", 4)], 4)


def test_a_prompt_whose_cache_holds_some_of_its_images_costs_only_the_others():
    """engine.vision encodes a prompt's images the cache does not hold, image by image."""
    images = PromptImages([{}, {}], [2, 3, 4, 5, 6, 7], [ImageSpan(2, 4, 1), ImageSpan(4, 8, 2)])
    for budget, scheduled in ((8, [("a", 8), ("both", 8)]), (7, [("a", 8), ("both", 2)])):
        cache = {1}  # both's first image (2 placeholders); its second has 4, as a's
        sched = make_scheduler(budget, cache)
        sched.add(with_image("a", 0))
        sched.add(Sequence("both", list(range(8)), SamplingParams(), images))
        assert run_step(sched, cache)[0] == scheduled  # 4 + 4 fits 8; past 7 both waits before its images


def test_the_encoder_budget_is_positive_or_left_to_the_engine():
    with pytest.raises(InvalidParameter, match="max_num_encoder_tokens must be positive") as refused:
        EngineConfig(max_num_encoder_tokens=0)
    assert refused.value.param == "max_num_encoder_tokens"
    assert EngineConfig().max_num_encoder_tokens is None  # the larger of max_num_batched_tokens and an image's

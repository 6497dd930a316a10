from dataclasses import dataclass, field

import pytest
import torch
import xgrammar as xgr

from engine.errors import InvalidParameter
from engine.sampler import Sampler
from engine.sampling_params import SamplingParams
from engine.structured_output import GrammarMatcher

EOS = 0


@dataclass(eq=False)  # hashed by identity: the sampler keys each request's generator by the object
class Request:
    params: SamplingParams
    prompt_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)


def request(prompt=(), output=(), **params) -> Request:
    return Request(SamplingParams(max_tokens=64, **params), list(prompt), list(output))


SAMPLER = Sampler({EOS})  # one, as an engine has one: a seeded request's draws go on from call to call


def sample(logits, *requests):
    return SAMPLER(torch.as_tensor(logits, dtype=torch.float32).reshape(len(requests), -1), requests)


def sample_ids(logits, *requests) -> list[int]:
    return [t.token_id for t in sample(logits, *requests)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_picks_the_argmax_of_every_row(dtype):
    logits = torch.randn(8, 500, generator=torch.Generator().manual_seed(0)).to(dtype)
    sampled = Sampler({EOS})(logits, [request(temperature=0.0) for _ in range(8)])
    assert [t.token_id for t in sampled] == logits.float().argmax(dim=-1).tolist()
    assert all(t.logprob is None and t.top_logprobs is None for t in sampled)


def test_greedy_breaks_ties_towards_the_lowest_id():
    assert sample_ids([1.0, 3.0, 3.0, 2.0], request(temperature=0.0, presence_penalty=0.1)) == [1]


def test_top_k_1_is_greedy_even_at_high_temperature():
    torch.manual_seed(0)
    logits = torch.randn(200, 100)
    ids = sample_ids(logits, *[request(temperature=50.0, top_k=1) for _ in range(200)])
    assert ids == logits.argmax(dim=-1).tolist()


def test_a_tiny_top_p_keeps_only_the_most_likely_token():
    torch.manual_seed(0)
    logits = torch.randn(200, 100)
    # 1e-9 is below float32 resolution near 1: every cumulative mass is <= 1 - top_p.
    ids = sample_ids(logits, *[request(temperature=5.0, top_p=1e-9) for _ in range(200)])
    assert ids == logits.argmax(dim=-1).tolist()


PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def draws(n=2000, logits=PROBS.log(), **params) -> set[int]:
    torch.manual_seed(0)
    return set(sample_ids(logits.repeat(n, 1), *[request(**params) for _ in range(n)]))


def test_sampling_without_filters_reaches_every_token():
    # The filter tests below would pass vacuously if unlikely tokens were never drawn at all.
    assert draws() == {0, 1, 2, 3}


def test_min_p_drops_tokens_below_its_share_of_the_best_probability():
    assert draws(min_p=0.5) == {0, 1}  # threshold 0.5 * 0.5 = 0.25 drops 0.15 and 0.05
    assert draws(min_p=0.2) == {0, 1, 2}


def test_top_k_keeps_the_k_most_likely_tokens():
    assert draws(top_k=2) == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert draws(top_p=0.7) == {0, 1}
    assert draws(top_p=0.85) == {0, 1, 2}


def test_top_p_applies_to_the_mass_left_by_top_k():
    assert draws(top_p=0.6) == {0, 1}  # 0.5 alone is not enough
    assert draws(top_k=2, top_p=0.6) == {0}  # 0.5 / (0.5 + 0.3) = 0.625 is


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_unseeded_draws_follow_the_softmax_of_logits_over_temperature(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20000
    torch.manual_seed(1234)
    ids = sample_ids(logits.repeat(n, 1), *[request(temperature=temperature) for _ in range(n)])
    observed = torch.bincount(torch.tensor(ids), minlength=5).float()
    expected = torch.softmax(logits / temperature, dim=0) * n
    chi_square = ((observed - expected) ** 2 / expected).sum().item()
    assert chi_square < 18.47  # 4 degrees of freedom, p = 0.001


def test_a_seeded_row_draws_the_same_tokens_whatever_else_is_in_the_batch():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    alone = request(seed=7, temperature=1.0, top_p=0.95)
    batched = request(seed=7, temperature=1.0, top_p=0.95)
    steps_alone, steps_batched = [], []
    for _ in range(20):
        steps_alone += sample_ids(logits[0], alone)
        others = [request(seed=99), request(), request(temperature=0.0), request(top_k=5)]
        batch = [others[0], others[1], batched, others[2], others[3]]
        rows = torch.stack([logits[1], logits[2], logits[0], logits[3], logits[1]])
        steps_batched.append(sample_ids(rows, *batch)[2])
    assert steps_alone == steps_batched
    assert len(set(steps_alone)) > 5  # really random draws, not an argmax in disguise


def test_different_seeds_draw_different_tokens():
    logits = torch.zeros(1000)
    firsts = {sample_ids(logits, request(seed=seed))[0] for seed in range(10)}
    assert len(firsts) > 5


def test_repetition_penalty_divides_positive_logits_of_seen_tokens():
    logits = [0.0, 2.0, 1.8]
    assert sample_ids(logits, request(temperature=0.0)) == [1]
    assert sample_ids(logits, request(temperature=0.0, repetition_penalty=1.2, prompt=[1])) == [2]
    assert sample_ids(logits, request(temperature=0.0, repetition_penalty=1.2, output=[1])) == [2]


def test_repetition_penalty_multiplies_negative_logits_of_seen_tokens():
    logits = [-5.0, -1.0, -1.1]
    assert sample_ids(logits, request(temperature=0.0, repetition_penalty=1.2, prompt=[1])) == [2]
    # Below 1 it rewards repetition instead.
    assert sample_ids(logits, request(temperature=0.0, repetition_penalty=0.8, prompt=[2])) == [2]


def test_frequency_penalty_grows_with_each_occurrence_in_the_output():
    logits = [0.0, 3.0, 2.0]
    assert sample_ids(logits, request(temperature=0.0, frequency_penalty=0.6, output=[1])) == [1]
    assert sample_ids(logits, request(temperature=0.0, frequency_penalty=0.6, output=[1, 1])) == [2]


def test_presence_penalty_counts_a_token_once():
    logits = [0.0, 3.0, 2.0]
    assert sample_ids(logits, request(temperature=0.0, presence_penalty=0.9, output=[1, 1, 1])) == [1]
    assert sample_ids(logits, request(temperature=0.0, presence_penalty=1.5, output=[1])) == [2]
    # The prompt does not count for the OpenAI penalties.
    assert sample_ids(logits, request(temperature=0.0, presence_penalty=2.0, frequency_penalty=2.0, prompt=[1])) == [1]


def test_penalties_leave_the_callers_logits_unchanged():
    logits = torch.tensor([[0.0, 3.0, 2.0]])
    Sampler({EOS})(logits, [request(temperature=0.0, presence_penalty=2.0, output=[1])])
    assert logits.tolist() == [[0.0, 3.0, 2.0]]


def test_min_tokens_blocks_eos_and_stop_token_ids_until_reached():
    logits = [5.0, 4.0, 3.0, 1.0]
    blocked = dict(temperature=0.0, min_tokens=2, stop_token_ids=[1])
    assert sample_ids(logits, request(output=[3], **blocked)) == [2]
    assert sample_ids(logits, request(output=[3, 3], **blocked)) == [0]
    # ignore_eos is the engine's business; min_tokens still masks EOS for it.
    assert sample_ids(logits, request(output=[], ignore_eos=True, **blocked)) == [2]
    # Random rows are masked too: EOS and the stop id are never drawn.
    torch.manual_seed(0)
    n = 500
    rows = torch.tensor([1.0, 1.0, 1.0, 1.0]).repeat(n, 1)
    assert set(sample_ids(rows, *[request(min_tokens=1, stop_token_ids=[1]) for _ in range(n)])) == {2, 3}


def test_logprobs_are_those_of_the_raw_logits_with_sorted_alternatives():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3))
    raw = torch.log_softmax(logits[0], dim=0)
    # Temperature and penalties change the choice, not the reported log-probs.
    req = request(seed=1, temperature=0.3, presence_penalty=1.0, output=[4], logprobs=5)
    (token,) = Sampler({EOS})(logits, [req])
    assert token.logprob == pytest.approx(raw[token.token_id].item())
    assert [i for i, _ in token.top_logprobs] == raw.topk(5).indices.tolist()
    values = [v for _, v in token.top_logprobs]
    assert values == sorted(values, reverse=True)
    assert values == pytest.approx(raw.topk(5).values.tolist())


def test_each_row_gets_its_own_number_of_alternatives():
    logits = torch.randn(3, 50)
    sampled = Sampler({EOS})(logits, [request(logprobs=0), request(logprobs=3), request(temperature=0.0)])
    assert sampled[0].top_logprobs == [] and sampled[0].logprob is not None
    assert len(sampled[1].top_logprobs) == 3
    assert sampled[2].logprob is None and sampled[2].top_logprobs is None


def test_a_mixed_batch_gives_each_row_what_it_would_get_alone():
    def rows():
        return [
            request(temperature=0.0),
            request(temperature=0.0, repetition_penalty=1.3, prompt=[5, 6], output=[7, 7]),
            request(seed=11, temperature=0.8, top_p=0.9, frequency_penalty=0.5, output=[3]),
            request(seed=12, temperature=1.2, top_k=20, min_p=0.05, logprobs=2),
            request(temperature=0.0, min_tokens=3, output=[1], logprobs=1),
            request(seed=13, presence_penalty=-1.0, output=[8, 9]),
        ]

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(5))
    logits[4, EOS] = 100.0  # EOS would win without min_tokens
    batched = Sampler({EOS})(logits, rows())
    alone = [Sampler({EOS})(logits[i : i + 1], [r])[0] for i, r in enumerate(rows())]
    assert batched == alone
    assert batched[4].token_id != EOS


def nucleus_by_full_sort(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """The kept tokens by definition: sort every row, keep top_k, then the smallest prefix reaching top_p."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for row, (k, p) in enumerate(zip(top_k, top_p)):
        values, ids = logits[row].sort(descending=True)
        values = values[: k or len(values)]
        probs = values.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs
        kept = max(1, int((before < p).sum()))
        keep[row, ids[:kept]] = True
        keep[row] |= logits[row] >= values[kept - 1]  # ties with the cutoff stay
    return keep


def test_top_p_without_top_k_keeps_what_a_full_sort_keeps_for_peaked_and_flat_rows():
    from engine.sampler import NUCLEUS_CANDIDATES, _top_k_top_p

    torch.manual_seed(0)
    vocab = 4 * NUCLEUS_CANDIDATES
    # Peaked rows find their nucleus among the first candidates; flat ones need more than them.
    scales = [8.0, 4.0, 0.01, 0.5, 8.0, 0.01]
    logits = torch.randn(len(scales), vocab) * torch.tensor(scales).unsqueeze(1)
    top_k, top_p = [0, 0, 0, 0, 50, 3000], [0.9, 0.5, 0.95, 0.99, 0.8, 0.9]
    kept = _top_k_top_p(logits, top_k, torch.tensor(top_p).unsqueeze(1)) > float("-inf")
    expected = nucleus_by_full_sort(logits, top_k, top_p)
    assert torch.equal(kept, expected)
    assert int(expected[2].sum()) > NUCLEUS_CANDIDATES  # the flat row did need the full sort


def test_logit_bias_moves_only_its_own_rows_tokens():
    logits = [[5.0, 1.0, 0.0, 4.0]] * 3
    biased = request(temperature=0.0, logit_bias={3: 2.0})
    banned = request(temperature=0.0, logit_bias={0: -100.0}, logprobs=0)
    plain = request(temperature=0.0)
    picked = sample(logits, biased, banned, plain)
    assert [t.token_id for t in picked] == [3, 3, 0]
    assert picked[1].logprob == pytest.approx(torch.log_softmax(torch.tensor(logits[1]), 0)[3].item())  # raw


@pytest.mark.parametrize("bias", [{-1: 1.0}, {1: 100.5}, {1: "1"}])
def test_logit_bias_out_of_range_is_refused(bias):
    with pytest.raises(InvalidParameter, match="logit_bias"):
        SamplingParams(logit_bias=bias)


# -- the bitmask in the sampler -----------------------------------------------------------------------
VOCAB = ["</s>", "y", "es", "yes", "n", "o", "no", "maybe", " ", "x"]  # ids 0..9; the logits are wider
WIDTH = 70


def toy_matcher(grammar: str = 'root ::= "yes" | "no"') -> GrammarMatcher:
    info = xgr.TokenizerInfo(VOCAB, vocab_size=WIDTH, stop_token_ids=[EOS])
    return GrammarMatcher(xgr.GrammarCompiler(info, cache_enabled=False).compile_grammar(grammar))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bitmask_changes_only_the_constrained_rows(dtype):
    logits = torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[:, 20:] += 50.0  # padding ids beyond the tokenizer's vocabulary would win if allowed
    original = logits.clone()

    def rows():
        return [request(temperature=0.0, logprobs=3), request(temperature=0.0), request(seed=5, top_k=4, logprobs=2),
                request(temperature=0.0, presence_penalty=0.5, output=[9])]

    sampler = Sampler({EOS})
    batched = sampler(logits, rows(), [None, toy_matcher(), None, toy_matcher()])
    assert torch.equal(logits, original)  # the caller's logits are not edited
    alone = [Sampler({EOS})(logits[i : i + 1], [r])[0] for i, r in enumerate(rows())]
    assert batched[0] == alone[0] and batched[2] == alone[2]  # unconstrained: tokens and logprobs as alone
    assert batched[1].token_id in (3, 4, 1, 6) and batched[3].token_id in (3, 4, 1, 6)  # "yes", "n", "y", "no"
    assert alone[1].token_id >= 20  # what the constrained rows would have taken


def test_no_constrained_row_keeps_the_greedy_fast_path(monkeypatch):
    sampler = Sampler({EOS})
    monkeypatch.setattr(sampler, "_mask_stop_tokens", lambda *a: pytest.fail("left the fast path"))
    logits = torch.randn(3, WIDTH)
    got = sampler(logits, [request(temperature=0.0) for _ in range(3)], [None, None, None])
    assert [t.token_id for t in got] == logits.argmax(dim=-1).tolist()


def test_eos_is_allowed_only_where_the_grammar_may_end():
    matcher = toy_matcher()
    logits = torch.zeros(1, WIDTH)
    logits[0, EOS] = 100.0
    assert Sampler({EOS})(logits, [request(temperature=0.0)], [matcher])[0].token_id != EOS
    assert matcher.accept_token(3)  # "yes": now only EOS is allowed
    logits[0, EOS] = -100.0
    assert Sampler({EOS})(logits, [request(temperature=0.0)], [matcher])[0].token_id == EOS


def test_min_tokens_keeps_eos_out_unless_the_grammar_allows_nothing_else():
    matcher = toy_matcher('root ::= "y" "es"?')
    assert matcher.accept_token(1)  # "y": the grammar may end, or go on with "es"
    logits = torch.zeros(1, WIDTH)
    logits[0, EOS] = 100.0
    asked = request(temperature=0.0, min_tokens=5, output=[1])
    assert Sampler({EOS})(logits, [asked], [matcher])[0].token_id == 2  # "es", not EOS
    assert matcher.accept_token(2)  # "yes": EOS is all that is left, the grammar wins over min_tokens
    assert Sampler({EOS})(logits, [asked], [matcher])[0].token_id == EOS

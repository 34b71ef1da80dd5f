"""Lookahead policies, drafters and the backend-free loop, on hand-made sequences and small numpy decoders.

``ToyDecoder`` is a complete :class:`~optimum_dynexec.backends.base.DecoderRunner`: its next-token logits are
a fixed random function of the last two tokens *it has been fed*, so a loop that feeds the wrong tokens or
trims its cache to the wrong length produces visibly wrong outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import optimum_dynexec.speculative.loop as loop_module
from conftest import chi_square_pvalue
from optimum_dynexec.speculative import (
    ConfidencePolicy,
    HeuristicPolicy,
    LookaheadPolicy,
    ModelDrafter,
    PromptLookupDrafter,
    TokenSelector,
    make_policy,
    speculative_generate,
)
from optimum_dynexec.speculative.drafters import ngram_continuation
from optimum_dynexec.speculative.logits import softmax
from optimum_dynexec.speculative.signals import DraftSignal


class ToyDecoder:
    def __init__(self, table: np.ndarray, max_length=None):
        self.table = table.astype(np.float32)  # [previous token, last token] -> logits
        self.vocab_size = table.shape[-1]
        self.max_length = max_length
        self.fed: list[int] = []
        self.forward_calls = 0

    @property
    def cache_length(self) -> int:
        return len(self.fed)

    def next_logits(self, sequence) -> np.ndarray:
        return self.table[sequence[-2] if len(sequence) > 1 else 0, sequence[-1]]

    def reset(self) -> None:
        self.fed = []

    def forward(self, token_ids: np.ndarray, last=None) -> np.ndarray:
        self.forward_calls += 1
        rows = []
        for token in token_ids:
            self.fed.append(int(token))
            rows.append(self.next_logits(self.fed))
        return np.stack(rows if last is None else rows[len(rows) - last :])

    def trim(self, length: int) -> None:
        del self.fed[length:]


class PaddedToyDecoder(ToyDecoder):
    """A toy decoder whose calls run padded up to ``widths`` (as the paged OpenVINO runner's do)."""

    def __init__(self, table, widths):
        super().__init__(table)
        self.widths = widths

    def padded_length(self, count: int) -> int:
        return next((w for w in self.widths if w >= count), count)


def toy_pair(vocab: int, seed: int, noise: float, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, vocab, vocab)) * scale
    draft = table + rng.standard_normal(table.shape) * noise * scale
    return ToyDecoder(table), ToyDecoder(draft)


def plain_greedy(decoder: ToyDecoder, prompt, max_new_tokens: int, selector: TokenSelector, eos=()) -> list[int]:
    sequence = list(prompt)
    for _ in range(max_new_tokens):
        token = selector.greedy(decoder.next_logits(sequence), np.array(sequence))
        sequence.append(token)
        if token in eos:
            break
    return sequence[len(prompt):]


# ---------------------------------------------------------------- policies


def test_constant_policy_always_drafts_k():
    policy = LookaheadPolicy(5)
    for proposed, accepted in [(5, 0), (5, 5), (3, 1)]:
        policy.observe(proposed, accepted)
        assert policy.lookahead() == 5
        assert policy.keep_drafting(0, DraftSignal(0.01, 0.005, 5.0))
    assert not policy.needs_signal


def test_heuristic_policy_follows_transformers_schedule():
    policy = HeuristicPolicy(4, max_assistant_tokens=9)
    steps = [(4, 4, 6), (6, 6, 8), (8, 8, 9), (9, 2, 8), (8, 0, 7), (7, 7, 9)]
    for proposed, accepted, expected in steps:
        policy.observe(proposed, accepted)
        assert policy.lookahead() == expected
    for _ in range(20):
        policy.observe(policy.lookahead(), 0)
    assert policy.lookahead() == 1
    policy.observe(0, 0)  # nothing proposed (budget exhausted): no information
    assert policy.lookahead() == 1
    policy.reset()
    assert policy.lookahead() == 4


def test_confidence_policy_stops_below_the_threshold():
    policy = ConfidencePolicy(6, threshold=0.4)
    assert policy.needs_signal and policy.lookahead() == 6
    assert policy.keep_drafting(0, DraftSignal(0.4, 0.3, 1.0))
    assert policy.keep_drafting(2, DraftSignal(0.95, 0.01, 0.1))
    assert not policy.keep_drafting(1, DraftSignal(0.39, 0.3, 1.5))
    assert policy.keep_drafting(0, None)


@pytest.mark.parametrize(
    "args, expected",
    [((3,), LookaheadPolicy), ((3, "constant", None), LookaheadPolicy), ((3, "constant", 0.0), LookaheadPolicy),
     ((3, "heuristic"), HeuristicPolicy), ((3, "constant", 0.3), ConfidencePolicy)],
)
def test_make_policy_maps_transformers_options(args, expected):
    policy = make_policy(*args)
    assert type(policy) is expected and policy.lookahead() == 3


@pytest.mark.parametrize(
    "args, message",
    [((0,), "num_assistant_tokens must be >= 1"), ((3, "dynamic"), "Unknown num_assistant_tokens_schedule"),
     ((3, "heuristic", 0.5), "cannot be combined"), ((3, "constant", 1.0), r"must be in \[0, 1\)")],
)
def test_make_policy_refuses_bad_options(args, message):
    with pytest.raises(ValueError, match=message):
        make_policy(*args)


# ---------------------------------------------------------------- prompt lookup


def propose(sequence, max_tokens=3, max_ngram=3, min_ngram=1):
    drafter = PromptLookupDrafter(max_ngram, min_ngram)
    proposal = drafter.propose(np.array(sequence, dtype=np.int64), max_tokens, LookaheadPolicy(max_tokens),
                               TokenSelector(), None)
    assert proposal.probs is None
    return proposal.tokens.tolist()


def test_prompt_lookup_returns_the_continuation_of_the_matching_ngram():
    assert propose([1, 2, 3, 4, 5, 6, 9, 1, 2, 3]) == [4, 5, 6]


def test_prompt_lookup_uses_the_latest_occurrence():
    assert propose([5, 6, 7, 1, 5, 6, 8, 2, 5, 6], max_tokens=2, max_ngram=2) == [8, 2]


def test_prompt_lookup_prefers_the_longest_ngram():
    # [3, 4] continues with 9 at its latest bigram occurrence, while the 1-gram [4] was last followed by 7
    assert propose([3, 4, 9, 4, 7, 3, 4], max_tokens=1, max_ngram=2) == [9]
    assert propose([3, 4, 9, 4, 7, 3, 4], max_tokens=1, max_ngram=1) == [7]


def test_prompt_lookup_falls_back_to_shorter_ngrams():
    assert propose([1, 2, 3, 9, 8, 3], max_tokens=2) == [9, 8]


def test_prompt_lookup_respects_the_minimum_ngram_size():
    assert propose([1, 2, 3, 9, 8, 3], max_tokens=2, min_ngram=2) == []


def test_prompt_lookup_without_a_match_proposes_nothing():
    assert propose([1, 2, 3, 4, 5]) == []
    assert propose([7]) == []


def test_prompt_lookup_continuation_is_cut_at_max_tokens_and_sequence_end():
    assert propose([4, 5, 6, 4], max_tokens=10) == [5, 6, 4]
    assert propose([4, 5, 6, 7, 8, 4], max_tokens=2) == [5, 6]


def test_prompt_lookup_does_not_modify_the_sequence():
    sequence = np.array([1, 2, 3, 1, 2], dtype=np.int64)
    PromptLookupDrafter().propose(sequence, 3, LookaheadPolicy(3), TokenSelector(), None)
    assert sequence.tolist() == [1, 2, 3, 1, 2]


def test_prompt_lookup_refuses_bad_ngram_sizes():
    with pytest.raises(ValueError, match="min_ngram_size <= max_matching_ngram_size"):
        PromptLookupDrafter(max_ngram_size=1, min_ngram_size=2)


# ---------------------------------------------------------------- model drafter


def test_model_drafter_proposes_the_draft_greedy_continuation():
    _, draft = toy_pair(12, seed=0, noise=0.0)
    drafter = ModelDrafter(draft, target_vocab_size=12)
    drafter.begin(np.array([3, 4]))
    sequence = np.array([3, 4], dtype=np.int64)
    proposal = drafter.propose(sequence, 4, LookaheadPolicy(4), TokenSelector(), None)
    assert proposal.tokens.tolist() == plain_greedy(draft, [3, 4], 4, TokenSelector())
    assert draft.fed == [3, 4] + proposal.tokens[:-1].tolist()  # the last draft token is not fed yet


def test_model_drafter_stops_after_a_low_confidence_token():
    _, draft = toy_pair(12, seed=1, noise=0.0, scale=0.5)  # flat logits: every top probability is low
    drafter = ModelDrafter(draft, target_vocab_size=12)
    drafter.begin(np.array([3]))
    proposal = drafter.propose(np.array([3]), 6, ConfidencePolicy(6, threshold=0.9), TokenSelector(), None)
    assert len(proposal.tokens) == 1


def test_model_drafter_maps_a_padded_draft_vocabulary():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((14, 14, 14)).astype(np.float32)
    table[..., 12:] = 100.0  # padded rows beyond the shared tokenizer must never be proposed
    drafter = ModelDrafter(ToyDecoder(table), target_vocab_size=12)
    drafter.begin(np.array([1]))
    proposal = drafter.propose(np.array([1]), 3, LookaheadPolicy(3), TokenSelector(), None)
    assert (proposal.tokens < 12).all()


def test_model_drafter_sampling_records_its_distributions():
    _, draft = toy_pair(10, seed=3, noise=0.0)
    drafter = ModelDrafter(draft, target_vocab_size=10)
    drafter.begin(np.array([1]))
    selector = TokenSelector(do_sample=True, temperature=0.7)
    proposal = drafter.propose(np.array([1]), 3, LookaheadPolicy(3), selector, np.random.default_rng(0))
    assert proposal.probs.shape == (3, 10)
    np.testing.assert_allclose(proposal.probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(proposal.probs[0], softmax(draft.table[0, 1] / np.float32(0.7)), rtol=1e-5)


def cycling_decoder(vocab: int, period: int, seed: int, noise: float = 0.0) -> ToyDecoder:
    """A decoder whose greedy continuation cycles through ``period`` tokens (so n-gram guesses come true), with
    ``noise`` breaking the cycle here and there."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, vocab, vocab)).astype(np.float32)
    cycle = rng.permutation(vocab)[:period]
    for i, token in enumerate(cycle):
        table[:, token, cycle[(i + 1) % period]] += 6.0
    table += rng.standard_normal(table.shape).astype(np.float32) * noise
    return ToyDecoder(table)


@pytest.mark.parametrize("noise", [0.0, 2.0, 6.0])
@pytest.mark.parametrize("lookup_tokens", [1, 3, 6])
def test_model_drafter_guesses_change_calls_not_proposals(noise, lookup_tokens):
    for seed in range(5):
        draft = cycling_decoder(12, period=5, seed=seed, noise=noise)
        sequence = np.array([1, 2, 3, 4, 5, 1, 2], dtype=np.int64)
        for policy in (LookaheadPolicy(8), ConfidencePolicy(8, threshold=0.6)):
            plain = ModelDrafter(ToyDecoder(draft.table), 12).propose(sequence, 8, policy, TokenSelector(), None)
            drafter = ModelDrafter(draft, 12, lookup_tokens=lookup_tokens)
            drafter.begin(sequence)
            proposal = drafter.propose(sequence, 8, policy, TokenSelector(), None)
            assert proposal.tokens.tolist() == plain.tokens.tolist()
            # the draft's cache holds the sequence and a prefix of the proposal, nothing a wrong guess left
            assert draft.fed == (sequence.tolist() + proposal.tokens.tolist())[: len(draft.fed)]
            assert len(draft.fed) >= len(sequence)


class CountingPolicy(LookaheadPolicy):
    """Drafts ``k`` tokens and counts the signals it is shown."""

    needs_signal = True

    def __init__(self, k: int):
        super().__init__(k)
        self.positions: list[int] = []

    def keep_drafting(self, position, signal):
        assert signal is not None
        self.positions.append(position)
        return True


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_model_drafter_shows_the_policy_every_drafted_token(max_tokens, do_sample):
    draft = cycling_decoder(12, period=3, seed=4)
    sequence = np.array([1, 2, 3, 1, 2, 3, 1], dtype=np.int64)
    drafter = ModelDrafter(draft, 12, lookup_tokens=3)
    drafter.begin(sequence)
    policy = CountingPolicy(max_tokens)
    selector = TokenSelector(do_sample=do_sample)
    proposal = drafter.propose(sequence, max_tokens, policy, selector, np.random.default_rng(0))
    assert policy.positions == list(range(len(proposal.tokens))) and len(proposal.tokens) == max_tokens


def test_model_drafter_right_guesses_save_draft_calls():
    draft = cycling_decoder(12, period=4, seed=0)
    prompt = np.array([5, 7], dtype=np.int64)
    cycle = plain_greedy(draft, prompt, 8, TokenSelector())
    sequence = np.array(prompt.tolist() + cycle, dtype=np.int64)  # the cycle twice: the guess has an n-gram
    calls = {}
    for lookup_tokens in (0, 3):
        decoder = ToyDecoder(draft.table)
        drafter = ModelDrafter(decoder, 12, lookup_tokens=lookup_tokens)
        drafter.begin(sequence)
        proposal = drafter.propose(sequence, 8, LookaheadPolicy(8), TokenSelector(), None)
        assert proposal.tokens.tolist() == plain_greedy(draft, sequence, 8, TokenSelector())
        calls[lookup_tokens] = drafter.calls
    assert calls[0] == 8
    assert calls[3] == 2  # 1 + 3 guesses, then 1 + 3 again: four tokens per call
    assert drafter.lookup_hits == 6


def test_model_drafter_does_not_guess_when_sampling():
    draft = cycling_decoder(10, period=3, seed=1)
    sequence = np.array([1, 2, 3, 1, 2, 3, 1], dtype=np.int64)
    drafter = ModelDrafter(draft, 10, lookup_tokens=3)
    drafter.begin(sequence)
    selector = TokenSelector(do_sample=True, temperature=0.7)
    proposal = drafter.propose(sequence, 5, LookaheadPolicy(5), selector, np.random.default_rng(0))
    assert drafter.calls == len(proposal.tokens) == 5 and drafter.lookup_hits == 0


def test_model_drafter_refuses_a_negative_guess_count():
    with pytest.raises(ValueError, match="lookup_tokens"):
        ModelDrafter(ToyDecoder(np.zeros((2, 2, 2))), 2, lookup_tokens=-1)


def test_model_drafter_uses_a_spare_padded_slot_for_a_one_token_guess():
    draft = cycling_decoder(12, period=4, seed=0)
    c = plain_greedy(draft, [5, 7], 4, TokenSelector())  # the draft's cycle
    # the last token's latest occurrence is followed by the draft's next token; no 2-gram matches
    sequence = np.array([9, c[1], c[2], c[3], 10, c[1]], dtype=np.int64)
    expected = plain_greedy(draft, sequence, 2, TokenSelector())
    assert expected[0] == c[2]
    calls = {}
    for widths in ((), (2, 5)):
        decoder = PaddedToyDecoder(draft.table, widths)
        drafter = ModelDrafter(decoder, 12, lookup_tokens=3)
        decoder.forward(sequence[:-1])  # the draft has seen all but the last token, as in the loop
        proposal = drafter.propose(sequence, 2, LookaheadPolicy(2), TokenSelector(), None)
        assert proposal.tokens.tolist() == expected
        calls[widths] = drafter.calls
    assert calls == {(): 2, (2, 5): 1}


def test_model_drafter_fill_gives_rows_past_the_stop_for_free():
    draft = cycling_decoder(12, period=4, seed=0)
    prompt = np.array([5, 7], dtype=np.int64)
    cycle = plain_greedy(draft, prompt, 8, TokenSelector())
    sequence = np.array(prompt.tolist() + cycle, dtype=np.int64)  # the guess has an n-gram to follow
    continuation = plain_greedy(draft, sequence, 6, TokenSelector())
    drafter = ModelDrafter(draft, 12, lookup_tokens=3)
    drafter.begin(sequence)
    proposal = drafter.propose(sequence, 2, LookaheadPolicy(2), TokenSelector(), None)  # one call: 1 + 1 guess
    assert proposal.tokens.tolist() == continuation[:2] and drafter.calls == 1
    extended = np.concatenate([sequence, proposal.tokens])
    calls = drafter.calls
    fill = drafter.fill(extended, 3)
    # the call had room for 3 guesses, so past the two proposed tokens it computed two more rows: the draft's
    # own next tokens; the third comes from the n-gram continuation (the cycle), which here agrees
    assert fill.tolist() == continuation[2:5] and drafter.calls == calls
    # the draft's cache holds only tokens of the draft's chain
    assert draft.fed == (extended.tolist() + continuation[2:])[: len(draft.fed)]
    # used once: a second fill (or a fill after another sequence) is the n-gram continuation alone
    assert drafter.fill(extended, 3).tolist() == ngram_continuation(extended, 3, 3, 2).tolist()


def test_model_drafter_fill_is_the_ngram_continuation_without_free_rows():
    sequence = np.array([1, 2, 3, 4, 1, 2], dtype=np.int64)
    drafter = ModelDrafter(ToyDecoder(np.zeros((6, 6, 6))), 6, lookup_tokens=3)
    assert drafter.fill(sequence, 2).tolist() == [3, 4]
    assert drafter.fill(sequence, 0).tolist() == []
    assert ModelDrafter(ToyDecoder(np.zeros((6, 6, 6))), 6, lookup_tokens=0).fill(sequence, 2).tolist() == []


def test_prompt_lookup_fill_continues_past_the_proposal():
    drafter = PromptLookupDrafter(max_ngram_size=2)
    sequence = np.array([1, 2, 3, 4, 5, 1, 2], dtype=np.int64)
    proposal = drafter.propose(sequence, 4, ConfidencePolicy(4, 0.5), TokenSelector(), None)
    assert proposal.tokens.tolist() == [3, 4, 5, 1]  # no signal: the confidence policy keeps drafting
    assert drafter.fill(np.concatenate([sequence, [3]]), 2).tolist() == [4, 5]


# ---------------------------------------------------------------- the loop on toy decoders


@pytest.mark.parametrize("lookup_tokens", [0, 3])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("noise", [0.0, 0.3, 3.0])
def test_loop_greedy_equals_plain_greedy(k, noise, lookup_tokens):
    for seed in range(4):
        target, draft = toy_pair(16, seed, noise)
        prompt = np.array([seed + 1, 7, 3], dtype=np.int64)
        drafter = ModelDrafter(draft, 16, lookup_tokens=lookup_tokens)
        result = speculative_generate(target, drafter, LookaheadPolicy(k), prompt, TokenSelector(), 30)
        assert result.tokens.tolist() == plain_greedy(target, prompt, 30, TokenSelector())
        # the caches hold the sequence up to (not including) the last token
        assert target.fed == prompt.tolist() + result.tokens[:-1].tolist()
        assert draft.fed == (prompt.tolist() + result.tokens.tolist())[: len(draft.fed)]
        assert result.stats.target_calls == target.forward_calls
        if noise == 0.0:
            assert result.stats.acceptance_rate == 1.0


@pytest.mark.parametrize("policy", [LookaheadPolicy(4), ConfidencePolicy(8, threshold=0.5)])
def test_loop_with_draft_guesses_is_exact_and_saves_draft_calls(policy):
    saved = 0
    for seed in range(4):
        target = cycling_decoder(16, period=6, seed=seed, noise=1.0)
        draft = ToyDecoder(target.table + np.random.default_rng(seed).standard_normal(target.table.shape) * 0.5)
        prompt = np.array([seed + 1, 7, 3], dtype=np.int64)
        result = speculative_generate(target, ModelDrafter(draft, 16, lookup_tokens=3), policy, prompt,
                                      TokenSelector(), 40)
        assert result.tokens.tolist() == plain_greedy(target, prompt, 40, TokenSelector())
        assert draft.fed == (prompt.tolist() + result.tokens.tolist())[: len(draft.fed)]
        saved += result.stats.draft_tokens_proposed - (result.stats.draft_calls - 1)  # minus the prompt's call
    assert saved > 0


@pytest.mark.parametrize("lookup_tokens", [0, 3])
@pytest.mark.parametrize("policy", [ConfidencePolicy(8, threshold=0.8), LookaheadPolicy(2)])
def test_loop_fills_the_padding_of_target_calls_exactly(policy, lookup_tokens):
    filled = calls_saved = 0
    for seed in range(4):
        table = cycling_decoder(16, period=6, seed=seed, noise=1.0).table
        draft = ToyDecoder(table + np.random.default_rng(seed).standard_normal(table.shape) * 0.5)
        prompt = np.array([seed + 1, 7, 3], dtype=np.int64)
        expected = plain_greedy(ToyDecoder(table), prompt, 40, TokenSelector())
        calls = {}
        for widths in ((), (2, 5, 9)):
            target = PaddedToyDecoder(table, widths)
            draft.reset()
            result = speculative_generate(target, ModelDrafter(draft, 16, lookup_tokens=lookup_tokens), policy,
                                          prompt, TokenSelector(), 40)
            assert result.tokens.tolist() == expected
            assert target.fed == prompt.tolist() + result.tokens[:-1].tolist()
            assert draft.fed == (prompt.tolist() + result.tokens.tolist())[: len(draft.fed)]
            stats = result.stats
            assert stats.draft_tokens_accepted <= stats.draft_tokens_proposed
            assert sum(stats.accepted_per_step) + stats.target_calls == stats.new_tokens
            calls[widths] = stats.target_calls
            if not widths or lookup_tokens == 0:
                assert stats.fill_tokens_proposed == 0
        filled += stats.fill_tokens_accepted
        calls_saved += calls[()] - calls[(2, 5, 9)]
    if lookup_tokens:
        assert filled > 0 and calls_saved > 0


def test_loop_fills_prompt_lookup_proposals_exactly():
    target = cycling_decoder(16, period=5, seed=3, noise=1.0)
    prompt = np.array([2, 7, 3], dtype=np.int64)
    expected = plain_greedy(target, prompt, 40, TokenSelector())
    result = speculative_generate(PaddedToyDecoder(target.table, (5,)), PromptLookupDrafter(3, 2),
                                  ConfidencePolicy(1, 0.5), prompt, TokenSelector(), 40)
    assert result.tokens.tolist() == expected
    assert result.stats.fill_tokens_accepted > 0 and max(result.stats.proposed_per_step) <= 1


def test_loop_greedy_with_eos_penalty_and_min_length():
    target, draft = toy_pair(16, seed=5, noise=0.3)
    prompt = np.array([1, 2], dtype=np.int64)
    free = plain_greedy(target, prompt, 30, TokenSelector())
    eos = [free[6]]
    selector = TokenSelector(repetition_penalty=1.3, eos_token_ids=eos, min_length=2 + 4)
    result = speculative_generate(target, ModelDrafter(draft, 16), LookaheadPolicy(4), prompt, selector, 30,
                                  eos_token_ids=eos)
    assert result.tokens.tolist() == plain_greedy(target, prompt, 30, selector, eos=eos)


def test_loop_stops_at_should_stop_and_streams_every_token():
    target, draft = toy_pair(16, seed=6, noise=0.3)
    prompt = np.array([4, 5], dtype=np.int64)
    free = plain_greedy(target, prompt, 30, TokenSelector())
    streamed = []
    result = speculative_generate(
        target, ModelDrafter(draft, 16), LookaheadPolicy(6), prompt, TokenSelector(), 30,
        on_tokens=lambda tokens: streamed.extend(tokens.tolist()),
        should_stop=lambda sequence: len(sequence) == 2 + 13,
    )
    assert result.tokens.tolist() == free[:13] == streamed


def test_loop_respects_max_length():
    target, draft = toy_pair(16, seed=7, noise=0.3)
    prompt = np.array([4, 5, 6], dtype=np.int64)
    result = speculative_generate(target, ModelDrafter(draft, 16), LookaheadPolicy(4), prompt, TokenSelector(), 30,
                                  max_length=10)
    assert len(result.tokens) == 7


def test_loop_output_scores_are_the_processed_rows():
    target, draft = toy_pair(16, seed=8, noise=0.3)
    prompt = np.array([4, 5], dtype=np.int64)
    selector = TokenSelector(repetition_penalty=1.2)
    result = speculative_generate(target, ModelDrafter(draft, 16), LookaheadPolicy(3), prompt, selector, 12,
                                  output_scores=True)
    sequence = prompt.tolist() + result.tokens.tolist()
    assert len(result.scores) == 12
    for i, scores in enumerate(result.scores):
        prefix = np.array(sequence[: 2 + i])
        np.testing.assert_allclose(scores, selector.process(target.next_logits(prefix.tolist()), prefix), rtol=1e-6)


def test_loop_sampling_needs_a_generator():
    target, draft = toy_pair(8, seed=0, noise=0.3)
    with pytest.raises(ValueError, match="numpy random Generator"):
        speculative_generate(target, ModelDrafter(draft, 8), LookaheadPolicy(2), np.array([1]),
                             TokenSelector(do_sample=True), 4)


def sampled_pairs(runs: int, seed: int, drafter_factory, selector: TokenSelector):
    target, _ = toy_pair(6, seed=11, noise=0.0)
    rng = np.random.default_rng(seed)
    prompt = np.array([2, 3], dtype=np.int64)
    cells = np.empty(runs, dtype=np.int64)
    for run in range(runs):
        result = speculative_generate(target, drafter_factory(), LookaheadPolicy(2), prompt, selector, 3, rng=rng)
        tokens = result.tokens
        cells[run] = tokens[0] * 6 + tokens[1]
    p0 = selector.probabilities(target.next_logits([2, 3]), prompt)
    joint = np.stack([p0[a] * selector.probabilities(target.next_logits([3, a]), np.array([2, 3, a]))
                      for a in range(6)])
    return cells, joint.reshape(-1)


def joint_pvalue(cells, joint) -> float:
    return chi_square_pvalue(cells, joint)


def model_drafter():
    _, draft = toy_pair(6, seed=11, noise=0.8)
    return ModelDrafter(draft, 6)


@pytest.mark.parametrize("selector",
                         [TokenSelector(do_sample=True), TokenSelector(do_sample=True, temperature=0.6, top_k=4)],
                         ids=["plain", "temperature+top_k"])
def test_loop_sampling_reproduces_the_target_joint_distribution(selector):
    cells, joint = sampled_pairs(6000, seed=0, drafter_factory=model_drafter, selector=selector)
    assert joint_pvalue(cells, joint) > 1e-3


def test_loop_sampling_with_prompt_lookup_reproduces_the_target_joint_distribution():
    cells, joint = sampled_pairs(6000, seed=1, drafter_factory=lambda: PromptLookupDrafter(2),
                                 selector=TokenSelector(do_sample=True))
    assert joint_pvalue(cells, joint) > 1e-3


def test_loop_sampling_with_fill_reproduces_the_target_joint_distribution():
    """One sampled draft token, then a deterministic fill token in the padding: both judged by rejection."""
    target, draft = toy_pair(6, seed=11, noise=0.8)
    selector = TokenSelector(do_sample=True)
    rng = np.random.default_rng(3)
    # the draft's likely tokens after (2, 3) are 0 and 4; the n-gram (3, 0) is followed by 3, (3, 4) by 2
    prompt = np.array([3, 0, 3, 4, 2, 3], dtype=np.int64)
    cells, filled = np.empty(6000, dtype=np.int64), 0
    for run in range(len(cells)):
        padded = PaddedToyDecoder(target.table, (9,))  # the first call has the prompt too
        result = speculative_generate(padded, ModelDrafter(ToyDecoder(draft.table), 6, lookup_tokens=3),
                                      LookaheadPolicy(1), prompt, selector, 3, rng=rng)
        cells[run] = result.tokens[0] * 6 + result.tokens[1]
        filled += result.stats.fill_tokens_proposed
    p0 = selector.probabilities(target.next_logits([2, 3]), prompt)
    joint = np.stack([p0[a] * selector.probabilities(target.next_logits([3, a]), np.append(prompt, a))
                      for a in range(6)])
    assert filled > len(cells) / 2
    assert joint_pvalue(cells, joint.reshape(-1)) > 1e-3


def test_loop_sampling_test_catches_a_loop_that_accepts_every_draft(monkeypatch):
    def accept_all(draft_tokens, draft_probs, target_probs, rng):
        from optimum_dynexec.speculative.verification import sample

        return len(draft_tokens), sample(target_probs(len(draft_tokens)), rng)

    monkeypatch.setattr(loop_module, "accept_sampled", accept_all)
    cells, joint = sampled_pairs(6000, seed=0, drafter_factory=model_drafter, selector=TokenSelector(do_sample=True))
    assert joint_pvalue(cells, joint) < 1e-6

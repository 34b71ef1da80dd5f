"""``TokenSelector`` (numpy) against transformers' own logits processors and warpers on random logits: the
same masked set and the same processed scores / probabilities, in transformers' order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from optimum_dynexec.speculative.logits import TokenSelector, softmax, unsupported_generation_options

VOCAB = 64
ROWS = 40
EOS = [2, 7]


def random_rows(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((ROWS, VOCAB)) * rng.uniform(0.5, 4.0, (ROWS, 1))).astype(np.float32)


def random_prefix(seed: int, length: int = 12) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, VOCAB, length)


def transformers_scores(processors, row: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    ids = torch.from_numpy(prefix.astype(np.int64))[None]
    return LogitsProcessorList(processors)(ids, torch.from_numpy(row.copy())[None])[0].numpy()


def assert_same_scores(mine: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isneginf(mine), np.isneginf(theirs), err_msg="different masked tokens")
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(mine[finite], theirs[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(softmax(mine.copy()), torch.softmax(torch.from_numpy(theirs), -1).numpy(), atol=1e-6)


CASES = {
    "temperature": (dict(temperature=0.7), lambda: [TemperatureLogitsWarper(0.7)]),
    "hot temperature": (dict(temperature=1.8), lambda: [TemperatureLogitsWarper(1.8)]),
    "top_k": (dict(top_k=5), lambda: [TopKLogitsWarper(5)]),
    "top_k 1": (dict(top_k=1), lambda: [TopKLogitsWarper(1)]),
    "top_p": (dict(top_p=0.8), lambda: [TopPLogitsWarper(0.8)]),
    "top_p small": (dict(top_p=0.05), lambda: [TopPLogitsWarper(0.05)]),
    "min_p": (dict(min_p=0.1), lambda: [MinPLogitsWarper(0.1)]),
    "temperature+top_k+top_p+min_p": (
        dict(temperature=0.6, top_k=20, top_p=0.9, min_p=0.02),
        lambda: [TemperatureLogitsWarper(0.6), TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.02)],
    ),
    "repetition penalty + warpers": (
        dict(repetition_penalty=1.3, temperature=0.8, top_k=10),
        lambda: [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.8), TopKLogitsWarper(10)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sampling_processing_matches_transformers(case):
    options, processors = CASES[case]
    selector = TokenSelector(do_sample=True, **options)
    for index, row in enumerate(random_rows(list(CASES).index(case))):
        prefix = random_prefix(index)
        assert_same_scores(selector.process(row, prefix), transformers_scores(processors(), row, prefix))
        np.testing.assert_allclose(selector.probabilities(row, prefix).sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("penalty", [0.7, 1.2, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    selector = TokenSelector(repetition_penalty=penalty)
    for index, row in enumerate(random_rows(int(penalty * 10))):
        prefix = random_prefix(index, length=20)  # repeated ids included
        expected = transformers_scores([RepetitionPenaltyLogitsProcessor(penalty)], row, prefix)
        assert_same_scores(selector.process(row, prefix), expected)
        assert selector.greedy(row, prefix) == int(expected.argmax())


def test_repetition_penalty_with_an_empty_prefix_is_a_no_op():
    row = random_rows(0)[0]
    np.testing.assert_array_equal(TokenSelector(repetition_penalty=1.5).process(row, np.empty(0, np.int64)), row)


@pytest.mark.parametrize("prefix_length", [3, 9, 10, 11, 15])
def test_min_new_tokens_matches_transformers(prefix_length):
    prompt_length, min_new_tokens = 4, 6
    selector = TokenSelector(eos_token_ids=EOS, min_length=prompt_length + min_new_tokens)
    processor = MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens, torch.tensor(EOS))
    for index, row in enumerate(random_rows(prefix_length)):
        prefix = random_prefix(index, prefix_length)
        assert_same_scores(selector.process(row, prefix), transformers_scores([processor], row, prefix))
    masked = selector.process(random_rows(0)[0], random_prefix(0, prefix_length))
    assert np.isneginf(masked[EOS]).all() == (prefix_length < prompt_length + min_new_tokens)


@pytest.mark.parametrize("prefix_length", [5, 7, 8])
def test_min_length_matches_transformers(prefix_length):
    selector = TokenSelector(eos_token_ids=EOS, min_length=8)
    processor = MinLengthLogitsProcessor(8, torch.tensor(EOS))
    for index, row in enumerate(random_rows(prefix_length + 50)):
        prefix = random_prefix(index, prefix_length)
        assert_same_scores(selector.process(row, prefix), transformers_scores([processor], row, prefix))


def test_greedy_eos_masking_changes_the_choice():
    row = np.zeros(VOCAB, dtype=np.float32)
    row[EOS[0]], row[11] = 5.0, 4.0
    selector = TokenSelector(eos_token_ids=EOS, min_length=5)
    assert selector.greedy(row, np.arange(4)) == 11
    assert selector.greedy(row, np.arange(5)) == EOS[0]


def test_plain_greedy_is_the_raw_argmax():
    selector = TokenSelector()
    assert selector.is_plain_greedy
    for row in random_rows(3):
        assert selector.greedy(row, np.arange(3)) == int(row.argmax())
        np.testing.assert_array_equal(selector.process(row, np.arange(3)), row)
    assert not TokenSelector(repetition_penalty=1.1).is_plain_greedy
    assert not TokenSelector(eos_token_ids=EOS, min_length=3).is_plain_greedy
    assert not TokenSelector(do_sample=True).is_plain_greedy


def test_greedy_ignores_warpers():
    """transformers applies temperature/top-k/top-p only when sampling."""
    selector = TokenSelector(temperature=0.3, top_k=2, top_p=0.5)
    row = random_rows(4)[0]
    np.testing.assert_array_equal(selector.process(row, np.arange(3)), row)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(do_sample=True, temperature=0.0), "temperature must be > 0"),
        (dict(top_p=0.0), "top_p must be in"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    ],
)
def test_invalid_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TokenSelector(**options)


def test_default_generation_config_needs_no_fallback():
    assert unsupported_generation_options(GenerationConfig()) == []
    assert unsupported_generation_options(GenerationConfig(do_sample=True, top_k=5, top_p=0.9, min_p=0.1,
                                                           repetition_penalty=1.2, min_new_tokens=3)) == []


@pytest.mark.parametrize(
    "option",
    [
        {"no_repeat_ngram_size": 2},
        {"bad_words_ids": [[5]]},
        {"suppress_tokens": [4]},
        {"typical_p": 0.9},
        {"epsilon_cutoff": 0.01},
        {"sequence_bias": {(5,): 1.0}},
        {"forced_eos_token_id": 2},
        {"renormalize_logits": True},
    ],
)
def test_options_that_change_the_output_are_reported_as_unsupported(option):
    config = GenerationConfig(do_sample=True, **option)
    (name,) = option
    assert any(entry.startswith(f"{name}=") for entry in unsupported_generation_options(config))

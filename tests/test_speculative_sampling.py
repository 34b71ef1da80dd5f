"""Speculative sampling keeps the target's distribution, on the tiny exported models.

Each test generates the first tokens after one prompt many times (the rows of one batch are independent
speculative runs sharing one seeded generator) and compares the frequencies of the pair (t1, t2) with the
target's exact distribution p(t1) p(t2 | t1), computed from the plain target's logits and transformers'
own warpers. The draft disagrees with the target enough that a broken rejection rule is detected: the
same test is run once with a loop that accepts every draft token, and must fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import optimum_dynexec.speculative.loop as loop_module
from conftest import EOS_ID, PAD_ID, chi_square_pvalue, load_plain, load_speculative
from optimum_dynexec.speculative.verification import sample

ROWS = 2000
PROMPT_LENGTH = 5
ALPHA = 1e-3


def prompt(vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(4, vocab_size, (1, PROMPT_LENGTH)))


def warpers(options: dict) -> LogitsProcessorList:
    """transformers' processors for ``options``, in the order ``generate`` applies them."""
    processors = []
    if options.get("repetition_penalty", 1.0) != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(options["repetition_penalty"]))
    if options.get("temperature", 1.0) != 1.0:
        processors.append(TemperatureLogitsWarper(options["temperature"]))
    if options.get("top_k"):
        processors.append(TopKLogitsWarper(options["top_k"]))
    if options.get("top_p", 1.0) < 1.0:
        processors.append(TopPLogitsWarper(options["top_p"]))
    return LogitsProcessorList(processors)


def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()


def exact_pair_distribution(plain, ids: torch.Tensor, options: dict) -> np.ndarray:
    """p(t1, t2) over vocab x vocab; after eos the row is padded, so (eos, pad) takes all of p(eos)."""
    vocab = plain.config.vocab_size
    process = warpers(options)
    first = torch.softmax(process(ids, last_logits(plain, ids)), -1)[0]
    continued = torch.cat([ids.repeat(vocab, 1), torch.arange(vocab)[:, None]], dim=1)
    second = torch.softmax(process(continued, last_logits(plain, continued)), -1)
    second[EOS_ID] = torch.nn.functional.one_hot(torch.tensor(PAD_ID), vocab).float()
    return (first[:, None] * second).reshape(-1).double().numpy()


def sampled_pairs(model, ids: torch.Tensor, options: dict, seed: int = 0, **generate_kwargs) -> np.ndarray:
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=ids.repeat(ROWS, 1), attention_mask=torch.ones((ROWS, ids.shape[1]), dtype=torch.int64),
        do_sample=True, max_new_tokens=3, **options, **generate_kwargs,
    )
    first, second = output[:, PROMPT_LENGTH], output[:, PROMPT_LENGTH + 1]
    return (first * model.config.vocab_size + second).numpy()


VARIANTS = {
    "temperature": {"temperature": 0.6, "top_k": 0},
    "top_k": {"top_k": 6},
    "top_p": {"top_p": 0.5, "top_k": 0},
    "all warpers + repetition penalty": {"temperature": 1.3, "top_k": 12, "top_p": 0.8, "repetition_penalty": 1.5},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sampling_keeps_the_target_distribution(llama_pair, llama_plain, llama_speculative, variant):
    options = VARIANTS[variant]
    ids = prompt(llama_pair.vocab_size)
    cells = sampled_pairs(llama_speculative, ids, options, num_assistant_tokens=2)
    stats = llama_speculative.last_generation_stats
    assert 0.05 < stats.acceptance_rate < 0.95  # both branches of the rejection rule ran
    assert chi_square_pvalue(cells, exact_pair_distribution(llama_plain, ids, options)) > ALPHA


def test_sampling_keeps_the_target_distribution_qwen2(qwen2_pair, loaded):
    plain = loaded(("plain", "qwen2"), lambda: load_plain(qwen2_pair.target_dir))
    model = loaded(("speculative", "qwen2"),
                   lambda: load_speculative(qwen2_pair.target_dir, draft_model=qwen2_pair.draft_dir))
    options = {"top_k": 8}
    ids = prompt(qwen2_pair.vocab_size, seed=1)
    cells = sampled_pairs(model, ids, options, num_assistant_tokens=3)
    assert model.last_generation_stats.draft_tokens_accepted > 0
    assert chi_square_pvalue(cells, exact_pair_distribution(plain, ids, options)) > ALPHA


def accept_every_draft(draft_tokens, draft_probs, target_probs, rng):
    return len(draft_tokens), sample(target_probs(len(draft_tokens)), rng)


def resample_from_target_on_rejection(draft_tokens, draft_probs, target_probs, rng):
    """A classic mistake: after a rejection, draw from p instead of norm(max(0, p - q))."""
    for i, token in enumerate(draft_tokens):
        p = target_probs(i)
        if rng.random() * draft_probs[i][token] >= p[token]:
            return i, sample(p, rng)
    return len(draft_tokens), sample(target_probs(len(draft_tokens)), rng)


@pytest.mark.parametrize("broken_rule", [accept_every_draft, resample_from_target_on_rejection])
def test_the_sampling_test_catches_a_broken_rejection_rule(llama_pair, llama_plain, llama_speculative, monkeypatch,
                                                           broken_rule):
    monkeypatch.setattr(loop_module, "accept_sampled", broken_rule)
    options = VARIANTS["top_k"]
    ids = prompt(llama_pair.vocab_size)
    cells = sampled_pairs(llama_speculative, ids, options, num_assistant_tokens=2)
    assert chi_square_pvalue(cells, exact_pair_distribution(llama_plain, ids, options)) < 1e-6


def test_sampling_with_prompt_lookup_keeps_the_target_distribution(llama_pair, llama_plain, llama_speculative):
    options = {"top_k": 6}
    ids = prompt(llama_pair.vocab_size, seed=3)
    ids[0, 3:] = ids[0, :2]  # [a, b, c, a, b]: the lookup proposes [c, a]
    cells = sampled_pairs(llama_speculative, ids, options, prompt_lookup_num_tokens=2)
    stats = llama_speculative.last_generation_stats
    assert stats.draft_calls == 0 and stats.draft_tokens_proposed >= ROWS
    assert chi_square_pvalue(cells, exact_pair_distribution(llama_plain, ids, options)) > ALPHA


def test_sampling_is_reproducible_under_torch_manual_seed(llama_pair, llama_speculative):
    ids = prompt(llama_pair.vocab_size).repeat(4, 1)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(llama_speculative.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                               max_new_tokens=20, num_assistant_tokens=3, top_k=20))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_sampled_tokens_respect_top_k(llama_pair, llama_plain, llama_speculative):
    ids = prompt(llama_pair.vocab_size, seed=4)
    allowed = set(last_logits(llama_plain, ids)[0].topk(3).indices.tolist())
    torch.manual_seed(0)
    batch = ids.repeat(200, 1)
    output = llama_speculative.generate(input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                        max_new_tokens=4, top_k=3, num_assistant_tokens=3)
    assert set(output[:, PROMPT_LENGTH].tolist()) == allowed

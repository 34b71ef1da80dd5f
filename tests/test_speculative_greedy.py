"""Greedy speculative decoding returns the target's own greedy output, token for token.

Reference: upstream ``OVModelForCausalLM.generate`` on the same exported target with the same F32 runtime
properties. Every test also checks that the situation it is about really happened (drafts accepted and
rejected, eos inside a draft, a shorter lookahead...), so that a vacuous pass is impossible.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import EOS_ID, load_plain, load_speculative
from optimum_dynexec.configuration import SpeculationConfig

MAX_NEW = 40


def prompt(vocab_size: int, length: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(4, vocab_size, (1, length)))


def long_prompt(plain, vocab_size: int, length: int, seed: int) -> torch.Tensor:
    """The first prompt from ``seed`` on whose greedy continuation has no eos in ``MAX_NEW`` tokens."""
    for attempt in range(seed, seed + 50):
        ids = prompt(vocab_size, length, attempt)
        if EOS_ID not in run(plain, ids)[0, length:].tolist():
            return ids
    raise AssertionError("no prompt with a long continuation")


def run(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    kwargs.setdefault("max_new_tokens", MAX_NEW)
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, **kwargs)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape, f"{actual.tolist()} != {expected.tolist()}"
    assert torch.equal(actual, expected), f"{actual.tolist()} != {expected.tolist()}"


def eos_in_draft(stats) -> bool:
    """Whether the run's last token was an accepted draft token (the tokens after it were cut)."""
    previous = sum(a + 1 for a in stats.accepted_per_step[:-1])
    last_emitted = stats.new_tokens - previous
    return stats.accepted_per_step[-1] >= last_emitted


@pytest.mark.parametrize("prompt_length", [1, 5, 60])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_matches_target(pair, plain, speculative, k, prompt_length):
    ids = long_prompt(plain, pair.vocab_size, prompt_length, seed=prompt_length)
    expected = run(plain, ids)
    actual = run(speculative, ids, num_assistant_tokens=k)
    assert_same(actual, expected)
    stats = speculative.last_generation_stats
    assert stats.new_tokens == expected.shape[1] - prompt_length
    assert stats.target_calls < stats.new_tokens  # some drafts were accepted
    assert max(stats.proposed_per_step) <= k
    assert 0 < stats.draft_tokens_accepted <= stats.draft_tokens_proposed
    # the first step (prefills and the first drafts) is timed apart: the decode rate is the rest's
    assert stats.first_tokens == stats.accepted_per_step[0] + 1
    assert 0 < stats.seconds_to_first_tokens < stats.seconds_total
    assert stats.decode_tokens_per_second == pytest.approx(
        (stats.new_tokens - stats.first_tokens) / (stats.seconds_total - stats.seconds_to_first_tokens))


@pytest.mark.parametrize("schedule", ["constant", "heuristic"])
def test_draft_after_first_token_emits_the_targets_first_token_alone_and_stays_exact(pair, plain, speculative, schedule):
    ids = long_prompt(plain, pair.vocab_size, 9, seed=9)
    expected = run(plain, ids)
    actual = run(speculative, ids, num_assistant_tokens=3, num_assistant_tokens_schedule=schedule,
                 draft_after_first_token=True)
    assert_same(actual, expected)
    stats = speculative.last_generation_stats
    # the first call is the target's prefill alone; the draft reads the prompt and drafts from the second step on
    assert stats.proposed_per_step[0] == 0 and stats.first_tokens == 1
    assert stats.proposed_per_step[1] > 0 and stats.target_calls < stats.new_tokens
    # the model's default is unchanged: the first call verifies drafts
    run(speculative, ids, num_assistant_tokens=3)
    assert speculative.last_generation_stats.proposed_per_step[0] == 3


def test_draft_after_first_token_must_be_a_bool():
    with pytest.raises(ValueError, match="draft_after_first_token must be True or False"):
        SpeculationConfig(draft_after_first_token="yes")


def test_greedy_matches_target_over_many_prompts(pair, plain, speculative):
    """Many prompts so that both accepted and rejected drafts occur at every lookahead position."""
    rejected_positions = set()
    for seed in range(100, 112):
        ids = prompt(pair.vocab_size, 4, seed)
        expected = run(plain, ids, max_new_tokens=24)
        assert_same(run(speculative, ids, num_assistant_tokens=4, max_new_tokens=24), expected)
        stats = speculative.last_generation_stats
        rejected_positions.update(a for p, a in zip(stats.proposed_per_step, stats.accepted_per_step) if a < p)
    assert rejected_positions == {0, 1, 2, 3}


def test_eos_inside_a_draft_run_stops_where_target_stops(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    free = run(plain, ids)[0, 5:].tolist()
    stopped_inside_draft = 0
    for position in range(3, 30):
        eos = free[position]
        if eos in free[:position]:
            continue
        expected = run(plain, ids, eos_token_id=eos)
        assert expected.shape[1] == 5 + position + 1
        actual = run(speculative, ids, eos_token_id=eos, num_assistant_tokens=8)
        assert_same(actual, expected)
        stopped_inside_draft += eos_in_draft(speculative.last_generation_stats)
    assert stopped_inside_draft >= 2


def test_several_eos_ids_stop_at_the_first_one_generated(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    free = run(plain, ids)[0, 5:].tolist()
    firsts = [(p, t) for p, t in enumerate(free) if p >= 4 and t not in free[:p]]
    (early_position, early), (_, late) = firsts[0], firsts[1]
    eos_ids = [late, early]  # the later-generated one listed first: list order must not matter
    expected = run(plain, ids, eos_token_id=eos_ids)
    assert expected.shape[1] == 5 + early_position + 1
    assert_same(run(speculative, ids, eos_token_id=eos_ids, num_assistant_tokens=8), expected)


@pytest.mark.parametrize("max_new_tokens", [1, 2])
def test_max_new_tokens_below_lookahead(pair, plain, speculative, max_new_tokens):
    ids = prompt(pair.vocab_size, 7, seed=7)
    actual = run(speculative, ids, max_new_tokens=max_new_tokens, num_assistant_tokens=8)
    assert_same(actual, run(plain, ids, max_new_tokens=max_new_tokens))
    assert actual.shape[1] == 7 + max_new_tokens
    assert speculative.last_generation_stats.draft_tokens_proposed <= max_new_tokens - 1


def test_budget_cuts_the_last_lookahead(pair, plain, speculative):
    ids = prompt(pair.vocab_size, 7, seed=7)
    actual = run(speculative, ids, max_new_tokens=11, num_assistant_tokens=8)
    assert_same(actual, run(plain, ids, max_new_tokens=11))
    assert speculative.last_generation_stats.new_tokens == 11


def test_min_new_tokens_masks_eos_until_reached(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    free = run(plain, ids)[0, 5:].tolist()
    eos = next(token for position, token in enumerate(free) if position >= 2 and token not in free[:position])
    unconstrained = run(plain, ids, eos_token_id=eos)
    expected = run(plain, ids, eos_token_id=eos, min_new_tokens=12)
    assert expected.shape[1] >= 5 + 12 > unconstrained.shape[1]
    for k in (3, 8):
        assert_same(run(speculative, ids, eos_token_id=eos, min_new_tokens=12, num_assistant_tokens=k), expected)


def test_min_length_masks_eos_until_reached(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    free = run(plain, ids)[0, 5:].tolist()
    eos = free[3] if free[3] not in free[:3] else free[4]
    expected = run(plain, ids, eos_token_id=eos, min_length=5 + 15)
    assert expected.shape[1] >= 20
    assert_same(run(speculative, ids, eos_token_id=eos, min_length=5 + 15, num_assistant_tokens=4), expected)


def test_draft_equal_to_target_accepts_everything(llama_pair, llama_plain, loaded):
    model = loaded(("self-pair", "llama"),
                   lambda: load_speculative(llama_pair.target_dir, draft_model=llama_pair.target_dir))
    ids = prompt(llama_pair.vocab_size, 6, seed=3)
    assert_same(run(model, ids, num_assistant_tokens=5), run(llama_plain, ids))
    stats = model.last_generation_stats
    assert stats.acceptance_rate == 1.0
    assert stats.draft_tokens_proposed > 0
    assert stats.tokens_per_target_call > 4


def test_heuristic_schedule_is_exact_and_adapts(pair, plain, speculative):
    for seed in (5, 6):
        ids = prompt(pair.vocab_size, 5, seed)
        actual = run(speculative, ids, num_assistant_tokens=2, num_assistant_tokens_schedule="heuristic")
        assert_same(actual, run(plain, ids))
    proposed = speculative.last_generation_stats.proposed_per_step
    assert len(set(proposed[:-1])) > 1  # the lookahead moved
    assert max(proposed) > 2


def test_confidence_threshold_is_exact_and_stops_drafts_early(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    actual = run(speculative, ids, num_assistant_tokens=8, assistant_confidence_threshold=0.9)
    assert_same(actual, run(plain, ids))
    stats = speculative.last_generation_stats
    steps = range(len(stats.proposed_per_step))
    budgets = [MAX_NEW - 1 - sum(a + 1 for a in stats.accepted_per_step[:i]) for i in steps]
    assert any(p < min(8, b) for p, b in zip(stats.proposed_per_step, budgets))


def repetitive_prompt(vocab_size: int) -> torch.Tensor:
    phrase = list(range(10, 17))
    return torch.tensor([phrase + [40, 41] + phrase + [50] + phrase[:3]])


@pytest.mark.parametrize("lookup_tokens", [2, 6])
def test_prompt_lookup_generate_kwarg_is_exact(pair, plain, speculative, lookup_tokens):
    ids = repetitive_prompt(pair.vocab_size)
    actual = run(speculative, ids, prompt_lookup_num_tokens=lookup_tokens)
    assert_same(actual, run(plain, ids))
    stats = speculative.last_generation_stats
    assert stats.draft_calls == 0  # no draft model ran
    assert stats.draft_tokens_accepted > 0
    assert max(stats.proposed_per_step) <= lookup_tokens


def test_prompt_lookup_draft_is_exact(llama_pair, llama_plain, loaded):
    model = loaded(("prompt-lookup", "llama"), lambda: load_speculative(llama_pair.target_dir, draft="prompt-lookup"))
    assert model.draft_model is None
    ids = repetitive_prompt(llama_pair.vocab_size)
    for k in (None, 3):
        kwargs = {} if k is None else {"prompt_lookup_num_tokens": k}
        assert_same(run(model, ids, **kwargs), run(llama_plain, ids))
        assert model.last_generation_stats.draft_tokens_accepted > 0


def test_int4_self_draft_is_exact(llama_pair, llama_plain, loaded):
    from optimum_dynexec.exporters.weight_compression import has_compressed_weights

    model = loaded(("int4-self", "llama"), lambda: load_speculative(llama_pair.target_dir, draft="int4-self"))
    assert model.draft_kind == "int4-self"
    assert has_compressed_weights(model.draft_model.model)
    assert not has_compressed_weights(model.model)
    for seed in (1, 2):
        ids = prompt(llama_pair.vocab_size, 6, seed)
        assert_same(run(model, ids, num_assistant_tokens=4), run(llama_plain, ids))
        assert model.last_generation_stats.acceptance_rate > 0.3


def test_int4_self_draft_from_checkpoint_export_is_exact(qwen2_pair, loaded):
    model = loaded(("int4-self-export", "qwen2"),
                   lambda: load_speculative(qwen2_pair.target_checkpoint, export=True, draft="int4-self"))
    plain = loaded(("plain", "qwen2"), lambda: load_plain(qwen2_pair.target_dir))
    ids = prompt(qwen2_pair.vocab_size, 6, seed=4)
    assert_same(run(model, ids, num_assistant_tokens=4), run(plain, ids))
    assert model.last_generation_stats.draft_tokens_accepted > 0


def left_pad(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch (pad id 0) and its attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask


def test_left_padded_batch_equals_per_row_runs(pair, plain, speculative):
    rows = [long_prompt(plain, pair.vocab_size, 6, seed=21)[0], long_prompt(plain, pair.vocab_size, 3, seed=22)[0]]
    ids, mask = left_pad(rows)
    actual = speculative.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                  num_assistant_tokens=3)
    assert actual.shape[0] == 2
    assert torch.equal(actual[:, :6], ids)
    for i, row in enumerate(rows):
        alone = run(plain, row[None], max_new_tokens=20)[0, len(row):]
        assert actual[i, 6:6 + len(alone)].tolist() == alone.tolist()
    assert speculative.last_generation_stats.new_tokens == 40


def test_left_padded_batch_with_early_eos_is_padded_after_it(pair, plain, speculative):
    rows = [prompt(pair.vocab_size, 6, seed=21)[0], prompt(pair.vocab_size, 3, seed=22)[0]]
    first_free = run(plain, rows[0][None], max_new_tokens=20)[0, 6:].tolist()
    eos = first_free[4] if first_free[4] not in first_free[:4] else first_free[5]
    ids, mask = left_pad(rows)
    kwargs = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0)
    actual = speculative.generate(input_ids=ids, num_assistant_tokens=4, **kwargs)
    expected = plain.generate(input_ids=ids, **kwargs)
    assert_same(actual, expected)
    assert (actual[0] == eos).any() and actual[0, -1] == 0


def test_padded_batch_without_attention_mask_infers_it_like_transformers(pair, plain, speculative):
    rows = [long_prompt(plain, pair.vocab_size, 6, seed=21)[0], long_prompt(plain, pair.vocab_size, 3, seed=22)[0]]
    ids, _ = left_pad(rows)  # pad id 0, as in generation_config
    expected = plain.generate(input_ids=ids, max_new_tokens=15, do_sample=False)
    assert torch.equal(expected[1, 6:], run(plain, rows[1][None], max_new_tokens=15)[0, 3:])
    assert_same(speculative.generate(input_ids=ids, max_new_tokens=15, do_sample=False, num_assistant_tokens=3),
                expected)


@pytest.mark.parametrize("minimum", [{"min_length": 6 + 8}, {"min_new_tokens": 8}])
def test_left_padded_batch_with_min_length_matches_plain_batch(pair, plain, speculative, minimum):
    """transformers counts ``min_length`` over the padded row (``min_new_tokens`` over new tokens only)."""
    rows = [long_prompt(plain, pair.vocab_size, 6, seed=21)[0], long_prompt(plain, pair.vocab_size, 3, seed=22)[0]]
    ids, mask = left_pad(rows)
    short_free = run(plain, rows[1][None], max_new_tokens=20)[0, 3:].tolist()
    eos_candidates = [t for p, t in enumerate(short_free[:8]) if t not in short_free[:p]]
    kwargs = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0, **minimum)
    for eos in eos_candidates:
        expected = plain.generate(input_ids=ids, eos_token_id=eos, **kwargs)
        assert_same(speculative.generate(input_ids=ids, eos_token_id=eos, num_assistant_tokens=3, **kwargs), expected)


def test_repetition_penalty_matches_target(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    expected = run(plain, ids, repetition_penalty=1.5)
    assert not torch.equal(expected, run(plain, ids))  # the penalty changes the output
    for k in (2, 6):
        assert_same(run(speculative, ids, repetition_penalty=1.5, num_assistant_tokens=k), expected)
    assert speculative.last_generation_stats.draft_tokens_accepted > 0


def test_generation_stats_are_consistent(llama_pair, llama_plain, llama_speculative):
    ids = long_prompt(llama_plain, llama_pair.vocab_size, 5, seed=9)
    output = run(llama_speculative, ids, num_assistant_tokens=3)
    stats = llama_speculative.last_generation_stats
    assert stats.new_tokens == output.shape[1] - 5
    assert stats.target_calls == len(stats.proposed_per_step) == len(stats.accepted_per_step)
    assert stats.draft_tokens_proposed == sum(stats.proposed_per_step)
    assert stats.new_tokens == sum(stats.accepted_per_step) + stats.target_calls
    assert stats.acceptance_rate == stats.draft_tokens_accepted / stats.draft_tokens_proposed
    assert stats.draft_calls >= stats.target_calls
    assert stats.seconds_total >= stats.seconds_target + stats.seconds_draft > 0
    summary = stats.to_dict()
    assert summary["acceptance_rate"] == stats.acceptance_rate and summary["new_tokens"] == stats.new_tokens


def test_kv_cache_layouts(pair, speculative, stateful_speculative):
    from optimum_dynexec.backends.openvino import OVDecoderRunner
    from optimum_dynexec.backends.openvino_paged import OVPagedDecoderRunner
    from optimum_dynexec.models.speculative import _resolve_kv_cache

    assert speculative.kv_cache == "auto"  # the default: paged attention on CPU
    assert isinstance(speculative._runner(speculative), OVPagedDecoderRunner)
    assert isinstance(speculative._draft_runner(speculative.draft_model)[0], OVPagedDecoderRunner)
    assert isinstance(stateful_speculative._runner(stateful_speculative), OVDecoderRunner)
    assert isinstance(stateful_speculative._draft_runner(stateful_speculative.draft_model)[0], OVDecoderRunner)
    # other devices keep their stateful requests unless paged is asked for
    assert [_resolve_kv_cache("auto", device) for device in ("CPU", "GPU", "GPU.1", "NPU")] == \
        ["paged", "stateful", "stateful", "stateful"]
    assert _resolve_kv_cache("paged", "GPU") == "paged" and _resolve_kv_cache("stateful", "CPU") == "stateful"


@pytest.mark.parametrize("prompt_length", [1, 60])
@pytest.mark.parametrize("k", [1, 8])
def test_stateful_kv_cache_matches_target(pair, plain, stateful_speculative, k, prompt_length):
    ids = long_prompt(plain, pair.vocab_size, prompt_length, seed=prompt_length)
    assert_same(run(stateful_speculative, ids, num_assistant_tokens=k), run(plain, ids))
    stats = stateful_speculative.last_generation_stats
    assert 0 < stats.draft_tokens_accepted < stats.draft_tokens_proposed  # rollbacks happened


def test_paged_calls_are_padded_to_a_constant_width(pair, plain, speculative):
    """Verification calls run padded to k + 1 tokens and draft calls to 2, or to 2 + guesses on the draft's own
    compiled copy (constant input shapes); the pads must not change the real rows' logits nor leak into the cache."""
    ids = long_prompt(plain, pair.vocab_size, 5, seed=7)
    draft = speculative._draft_runner(speculative.draft_model)[0]
    assert_same(run(speculative, ids, num_assistant_tokens=3, draft_lookup_num_tokens=0), run(plain, ids))
    target = speculative._runner(speculative)
    assert target.input_widths == (4,) and draft.input_widths == (2,) and draft.dedicated_widths == ()
    assert_same(run(speculative, ids, num_assistant_tokens=3, draft_lookup_num_tokens=3), run(plain, ids))
    assert draft.input_widths == (2, 5) and draft.dedicated_widths == (5,)
    prompt = ids[0].numpy().astype(np.int64)
    target.reset()
    target.input_widths = (1,)
    target.forward(prompt)
    unpadded = [target.forward(np.array([token])).copy() for token in (11, 12)]
    target.reset()
    target.input_widths = (6, 9)
    target.forward(prompt)
    padded = [target.forward(np.array([token])).copy() for token in (11, 12)]
    assert target.cache_length == len(prompt) + 2
    assert all(row.shape == (1, target.vocab_size) for row in padded)
    np.testing.assert_allclose(np.concatenate(padded), np.concatenate(unpadded), rtol=1e-4, atol=1e-4)


def test_dedicated_widths_run_on_compiled_copies_sharing_one_kv_cache(pair, plain, speculative):
    """Widths with a compiled copy of their own (no per-shape work when calls alternate between widths) read
    and write the same KV cache as the runner's own request: rows and rollbacks are as without copies."""
    ids = long_prompt(plain, pair.vocab_size, 5, seed=3)
    prompt = ids[0].numpy().astype(np.int64)
    target = speculative._runner(speculative)
    target.max_copies, target.dedicated_widths = 0, ()  # release the copies earlier tests' calls kept
    calls = [np.array([11, 12]), np.array([13]), np.array([14, 15, 16, 17]), np.array([18])]

    def rows(dedicated):
        target.reset()
        target.input_widths, target.dedicated_widths = (3, 6), dedicated
        target.forward(prompt, last=1)
        out = []
        for tokens in calls:
            out.append(target.forward(tokens).copy())
            target.trim(target.cache_length - 1)  # roll the last token back: the next call overwrites it
        return out, target.cache_length

    alone, length = rows(())
    copied, copied_length = rows((6,))
    assert set(target._requests) == {6}  # one copy, compiled when its width was dedicated
    assert copied_length == length
    for a, b in zip(alone, copied):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    copy = target._requests[6]
    target.max_copies = 1
    target.dedicated_widths = ()
    rows((6,))
    assert target._requests[6] is copy  # kept within max_copies: routing back to it compiles nothing
    target.max_copies = 0
    target.dedicated_widths = ()
    assert not target._requests  # beyond max_copies, a width no longer dedicated releases its copy


@pytest.mark.parametrize("layout", ["paged", "stateful"])
def test_logits_of_the_last_rows_only(pair, speculative, stateful_speculative, layout):
    """``forward(..., last=n)`` returns the rows of the last n tokens (the paged graph gathers them before the LM
    head, as openvino.genai does); they must equal the same rows of a call that computes every row."""
    model = speculative if layout == "paged" else stateful_speculative
    run(model, torch.tensor([[3, 4, 5]]), max_new_tokens=2)  # the runner exists
    target = model._runner(model)
    if layout == "paged":
        assert "logits_indices" in {name for port in target.compiled.inputs for name in port.get_names()}
    prompt = np.arange(5, 25, dtype=np.int64) % pair.vocab_size
    target.reset()
    every_row = target.forward(prompt).copy()
    step_every_row = target.forward(np.array([7, 8, 9])).copy()
    target.reset()
    last_row = target.forward(prompt, last=1).copy()
    step_last_two = target.forward(np.array([7, 8, 9]), last=2).copy()
    assert every_row.shape == (len(prompt), target.vocab_size) and last_row.shape == (1, target.vocab_size)
    assert target.cache_length == len(prompt) + 3
    np.testing.assert_allclose(last_row, every_row[-1:], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(step_last_two, step_every_row[1:], rtol=1e-4, atol=1e-4)


def test_kv_cache_compaction_keeps_the_output_exact(pair, plain, stateful_speculative, monkeypatch):
    """Stateful layout: rolled-back slots stay in the cache as masked holes until they outnumber live tokens;
    then the cache is compacted for real. With no slack, compaction happens during the run; the output must
    not change."""
    import optimum_dynexec.backends.openvino as backend

    monkeypatch.setattr(backend, "_COMPACT_SLACK", 0)
    ids = long_prompt(plain, pair.vocab_size, 3, seed=30)
    run(stateful_speculative, ids, max_new_tokens=2)  # both runners exist
    model = stateful_speculative
    runners = [model._runner(model), model._draft_runner(model.draft_model)[0]]
    before = [runner.compactions for runner in runners]
    actual = run(stateful_speculative, ids, num_assistant_tokens=8, max_new_tokens=60)
    assert_same(actual, run(plain, ids, max_new_tokens=60))
    assert all(runner.compactions > count for runner, count in zip(runners, before))


def test_paged_cache_growth_keeps_the_output_exact(pair, plain, loaded, monkeypatch):
    """The paged cache starts with one block and is reallocated (old blocks copied) several times mid-run."""
    import optimum_dynexec.backends.openvino_paged as paged

    monkeypatch.setattr(paged, "_INITIAL_BLOCKS", 1)
    speculative = load_speculative(pair.target_dir, draft_model=pair.draft_dir, kv_cache="paged")
    ids = long_prompt(plain, pair.vocab_size, 3, seed=30)
    actual = run(speculative, ids, num_assistant_tokens=8, max_new_tokens=100)
    assert_same(actual, run(plain, ids, max_new_tokens=100))
    runner = speculative._runner(speculative)
    assert runner._blocks * runner.block_size >= 100 and runner._blocks >= 2 ** 2  # grew from 1 block, doubling


def test_unknown_kv_cache_layout_is_refused(pair):
    with pytest.raises(ValueError, match="kv_cache='blocks'.*paged.*stateful"):
        load_speculative(pair.target_dir, draft_model=pair.draft_dir, kv_cache="blocks")


def test_draft_guesses_keep_the_output_and_save_draft_calls(pair, plain, speculative):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=11)
    expected = run(plain, ids, max_new_tokens=60)
    calls = {}
    for guesses in (0, 3):
        assert_same(run(speculative, ids, max_new_tokens=60, num_assistant_tokens=6, draft_lookup_num_tokens=guesses),
                    expected)
        stats = speculative.last_generation_stats
        calls[guesses] = stats.draft_calls
        assert stats.draft_tokens_proposed > 0
    # the tiny random model repeats itself, so n-gram guesses come true and save draft calls
    assert calls[3] < calls[0]


def test_bad_draft_guess_count_is_refused(pair, speculative):
    ids = prompt(pair.vocab_size, 5, seed=1)
    with pytest.raises(ValueError, match="draft_lookup_num_tokens must be an integer >= 0"):
        run(speculative, ids, draft_lookup_num_tokens=-2)


def test_padded_verification_slots_verify_free_guesses_exactly(pair, plain, speculative):
    """A confidence-stopped draft leaves most of the padded verification call empty: the loop fills it with the
    draft's rows past the stop and the n-gram continuation, which the target verifies like drafts."""
    ids = long_prompt(plain, pair.vocab_size, 5, seed=11)
    expected = run(plain, ids, max_new_tokens=60)
    for guesses in (0, 3):
        actual = run(speculative, ids, max_new_tokens=60, num_assistant_tokens=8, assistant_confidence_threshold=0.9,
                     draft_lookup_num_tokens=guesses)
        assert_same(actual, expected)
        stats = speculative.last_generation_stats
        assert speculative._runner(speculative).input_widths == (6, 9)
        assert min(stats.proposed_per_step) < 5  # drafts stopped short of the widths
        if guesses:
            # the tiny random model repeats itself: some free guesses come true
            assert 0 < stats.fill_tokens_accepted <= stats.fill_tokens_proposed
            assert stats.draft_tokens_accepted + stats.fill_tokens_accepted == sum(stats.accepted_per_step)
        else:
            assert stats.fill_tokens_proposed == 0

"""The optimum / transformers API around speculative generation: dispatch of ``from_pretrained``, configs,
streamers, stopping criteria, dict outputs, per-call drafts, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

import optimum_dynexec
from conftest import EOS_ID, F32, load_speculative

MAX_NEW = 30


def prompt(vocab_size: int, length: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(4, vocab_size, (1, length)))


def run(model, ids, **kwargs):
    kwargs.setdefault("max_new_tokens", MAX_NEW)
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, **kwargs)


def free_running_prompt(plain, vocab_size: int, length: int = 5, seed: int = 5) -> torch.Tensor:
    """A prompt whose greedy continuation has no eos in ``MAX_NEW`` tokens."""
    for attempt in range(seed, seed + 50):
        ids = prompt(vocab_size, length, attempt)
        if EOS_ID not in run(plain, ids)[0, length:].tolist():
            return ids
    raise AssertionError("no prompt with a long continuation")


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks: list[list[int]] = []
        self.ended = 0

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended += 1


# ---------------------------------------------------------------- from_pretrained dispatch


def test_from_pretrained_without_draft_args_is_upstream(llama_pair):
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(llama_pair.target_dir, ov_config=F32)
    assert type(model) is OVModelForCausalLM
    assert not isinstance(model, optimum_dynexec.OVSpeculativeModelForCausalLM)


def test_from_pretrained_with_draft_model_returns_speculative_class(llama_pair, llama_speculative):
    from optimum.intel import OVModelForCausalLM

    assert isinstance(llama_speculative, optimum_dynexec.OVSpeculativeModelForCausalLM)
    assert isinstance(llama_speculative, OVModelForCausalLM)
    assert llama_speculative.draft_kind == "model"
    assert llama_speculative.draft_model.config.num_hidden_layers == 2
    assert llama_speculative.config.num_hidden_layers == 4


def test_speculative_class_loads_directly_and_takes_a_loaded_draft(llama_pair, llama_plain):
    from optimum.intel import OVModelForCausalLM

    draft = OVModelForCausalLM.from_pretrained(llama_pair.draft_dir, ov_config=F32)
    model = optimum_dynexec.OVSpeculativeModelForCausalLM.from_pretrained(
        llama_pair.target_dir, draft_model=draft, ov_config=F32
    )
    assert model.draft_model is draft
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(model, ids, num_assistant_tokens=3), run(llama_plain, ids))
    assert model.last_generation_stats.draft_tokens_accepted > 0


def test_draft_exported_from_checkpoint_is_exact(llama_pair, llama_plain):
    model = load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_checkpoint, draft_export=True)
    assert model.draft_model.stateful
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(model, ids, num_assistant_tokens=3), run(llama_plain, ids))
    assert model.last_generation_stats.draft_tokens_accepted > 0


# ---------------------------------------------------------------- speculation config


def test_speculation_config_sets_default_lookahead(llama_pair, llama_plain):
    model = load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir,
                             speculation={"num_assistant_tokens": 6})
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(model, ids), run(llama_plain, ids))
    assert max(model.last_generation_stats.proposed_per_step) == 6
    run(model, ids, num_assistant_tokens=2)  # per-call override
    assert max(model.last_generation_stats.proposed_per_step) == 2
    run(model, ids)  # the override did not stick
    assert max(model.last_generation_stats.proposed_per_step) == 6


def test_lookahead_set_on_a_generation_config_object_is_used(llama_pair, llama_plain, llama_speculative):
    from transformers import GenerationConfig

    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    config = GenerationConfig(num_assistant_tokens=7, max_new_tokens=24, do_sample=False)
    out = llama_speculative.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    assert torch.equal(out, run(llama_plain, ids, max_new_tokens=24))
    assert max(llama_speculative.last_generation_stats.proposed_per_step) == 7


def test_speculation_config_round_trips_through_json(tmp_path):
    from optimum_dynexec import DynExecConfig, SpeculationConfig

    speculation = {"num_assistant_tokens": 7, "num_assistant_tokens_schedule": "heuristic"}
    config = DynExecConfig(draft="draft", speculation=speculation)
    config.save(tmp_path)
    restored = DynExecConfig.load(tmp_path)
    assert restored.speculation == SpeculationConfig(num_assistant_tokens=7, num_assistant_tokens_schedule="heuristic")
    assert restored.draft == "draft"


def test_default_lookahead_without_kwargs(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(llama_speculative, ids), run(llama_plain, ids))
    default = optimum_dynexec.SpeculationConfig().num_assistant_tokens
    assert max(llama_speculative.last_generation_stats.proposed_per_step) == default


def test_max_length_instead_of_max_new_tokens(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    expected = llama_plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_length=5 + 9)
    actual = llama_speculative.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_length=5 + 9,
                                        num_assistant_tokens=4)
    assert torch.equal(actual, expected)
    assert actual.shape[1] == 14


def test_generation_config_object(llama_pair, llama_plain, llama_speculative):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=9, do_sample=False, repetition_penalty=1.3, eos_token_id=EOS_ID,
                              pad_token_id=0)
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    mask = torch.ones_like(ids)
    expected = llama_plain.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    actual = llama_speculative.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                        num_assistant_tokens=3)
    assert torch.equal(actual, expected)
    assert actual.shape[1] == 5 + 9


def test_inputs_positional_and_no_attention_mask(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    expected = run(llama_plain, ids, max_new_tokens=12)
    assert torch.equal(llama_speculative.generate(ids, max_new_tokens=12, num_assistant_tokens=3), expected)


# ---------------------------------------------------------------- per-call draft


def test_assistant_model_drafts_for_one_call_only(llama_pair, llama_plain):
    model = load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir)
    original_draft = model.draft_model
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    expected = run(llama_plain, ids)

    assert torch.equal(run(model, ids, assistant_model=llama_plain, num_assistant_tokens=4), expected)
    assert model.last_generation_stats.acceptance_rate == 1.0  # the target drafting for itself

    assert torch.equal(run(model, ids, num_assistant_tokens=4), expected)
    assert model.draft_model is original_draft
    assert model.last_generation_stats.acceptance_rate < 1.0


def test_switching_drafts_keeps_the_compiled_runners_and_frees_a_dropped_draft(llama_pair, llama_plain):
    import gc

    from optimum.intel import OVModelForCausalLM

    model = load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir)
    first_draft = model.draft_model
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    expected = run(llama_plain, ids)
    assert torch.equal(run(model, ids, num_assistant_tokens=3), expected)
    target_runner = model._runner(model)
    first_draft_runner = model._draft_runner(first_draft)[0]

    second_draft = OVModelForCausalLM.from_pretrained(llama_pair.draft_dir, ov_config=F32)
    model.attach_draft(second_draft)
    assert torch.equal(run(model, ids, num_assistant_tokens=3), expected)
    model.attach_draft(first_draft)
    assert torch.equal(run(model, ids, num_assistant_tokens=3), expected)
    # switching back and forth (as a benchmark alternating drafts does) recompiles nothing
    assert model._runner(model) is target_runner
    assert model._draft_runner(first_draft)[0] is first_draft_runner
    assert len(model._runners) == 3

    del second_draft
    gc.collect()
    assert torch.equal(run(model, ids, num_assistant_tokens=3), expected)
    assert len(model._runners) == 2  # the dropped draft's runner went with it

def test_assistant_model_must_be_an_openvino_model(llama_pair, llama_speculative):
    ids = prompt(llama_pair.vocab_size, 3, seed=0)
    with pytest.raises(TypeError, match="assistant_model must be an OVModelForCausalLM"):
        run(llama_speculative, ids, assistant_model="not a model")


# ---------------------------------------------------------------- streamers


def test_streamer_receives_prompt_then_exactly_the_generated_tokens(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    streamer = RecordingStreamer()
    output = run(llama_speculative, ids, streamer=streamer, num_assistant_tokens=4)
    assert torch.equal(output, run(llama_plain, ids))
    assert streamer.chunks[0] == ids[0].tolist()
    assert sum(streamer.chunks[1:], []) == output[0, 5:].tolist()
    assert streamer.ended == 1
    assert max(len(chunk) for chunk in streamer.chunks[1:]) > 1  # accepted drafts arrive together


def test_streamer_stops_at_eos(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    free = run(llama_plain, ids)[0, 5:].tolist()
    eos = free[10] if free[10] not in free[:10] else free[11]
    streamer = RecordingStreamer()
    output = run(llama_speculative, ids, streamer=streamer, eos_token_id=eos, num_assistant_tokens=8)
    assert torch.equal(output, run(llama_plain, ids, eos_token_id=eos))
    assert sum(streamer.chunks[1:], []) == output[0, 5:].tolist()
    assert streamer.chunks[-1][-1] == eos


def test_text_iterator_streamer_yields_the_plain_text(llama_pair, llama_plain, llama_speculative):
    tokenizer = llama_pair.tokenizer
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    texts = []
    for model, extra in ((llama_plain, {}), (llama_speculative, {"num_assistant_tokens": 4})):
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=5)
        output = run(model, ids, streamer=streamer, **extra)
        texts.append("".join(streamer))
        assert texts[-1].strip() == tokenizer.decode(output[0, 5:]).strip()
    assert texts[0] == texts[1]


def test_streamer_with_batch_is_refused(llama_pair, llama_speculative):
    ids = prompt(llama_pair.vocab_size, 3, seed=0).repeat(2, 1)
    with pytest.raises(ValueError, match="batch size 1"):
        run(llama_speculative, ids, streamer=RecordingStreamer())


# ---------------------------------------------------------------- stopping criteria


def test_stop_strings_stop_where_plain_generate_stops(llama_pair, llama_plain, llama_speculative):
    tokenizer = llama_pair.tokenizer
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    free = run(llama_plain, ids)[0, 5:].tolist()
    text = tokenizer.decode(free)
    stop = next(piece for piece in (tokenizer.decode(free[p:p + 2])[-3:] for p in range(8, 28)) if text.find(piece) > 8)
    expected = run(llama_plain, ids, stop_strings=[stop], tokenizer=tokenizer)
    assert 5 < expected.shape[1] < 5 + MAX_NEW
    assert tokenizer.decode(expected[0, 5:]).endswith(stop)
    for k in (2, 8):
        actual = run(llama_speculative, ids, stop_strings=[stop], tokenizer=tokenizer, num_assistant_tokens=k)
        assert torch.equal(actual, expected)


class StopAfterToken(StoppingCriteria):
    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_custom_stopping_criteria_are_applied_per_token(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    free = run(llama_plain, ids)[0, 5:].tolist()
    token = free[7] if free[7] not in free[:7] else free[8]
    criteria = StoppingCriteriaList([StopAfterToken(token)])
    expected = run(llama_plain, ids, stopping_criteria=criteria)
    assert expected[0, -1] == token and expected.shape[1] < 5 + MAX_NEW
    actual = run(llama_speculative, ids, stopping_criteria=criteria, num_assistant_tokens=8)
    assert torch.equal(actual, expected)


# ---------------------------------------------------------------- dict outputs


@pytest.mark.parametrize("penalty", [1.0, 1.4])
def test_output_scores_match_plain_scores_and_tokens(llama_pair, llama_plain, llama_speculative, penalty):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    kwargs = dict(return_dict_in_generate=True, output_scores=True, repetition_penalty=penalty)
    expected = run(llama_plain, ids, **kwargs)
    actual = run(llama_speculative, ids, num_assistant_tokens=4, **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    generated = actual.sequences[0, 5:]
    assert len(actual.scores) == len(generated) == len(expected.scores)
    for step, (mine, theirs) in enumerate(zip(actual.scores, expected.scores)):
        assert mine.shape == theirs.shape == (1, llama_pair.vocab_size)
        assert int(mine[0].argmax()) == int(generated[step])
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=1e-4, atol=1e-3)


def test_return_dict_without_scores(llama_pair, llama_plain, llama_speculative):
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    output = run(llama_speculative, ids, return_dict_in_generate=True, num_assistant_tokens=3)
    assert torch.equal(output.sequences, run(llama_plain, ids))
    assert output.scores is None


# ---------------------------------------------------------------- saved pairs


def test_saved_pair_loads_back_as_the_same_pair(llama_pair, llama_plain, tmp_path):
    from optimum.intel import OVModelForCausalLM

    model = load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir,
                             speculation={"num_assistant_tokens": 6})
    model.save_pretrained(tmp_path / "pair")
    assert (tmp_path / "pair" / "draft" / "openvino_model.xml").is_file()
    assert (tmp_path / "pair" / "dynexec_config.json").is_file()

    reloaded = OVModelForCausalLM.from_pretrained(tmp_path / "pair", ov_config=F32)
    assert isinstance(reloaded, optimum_dynexec.OVSpeculativeModelForCausalLM)
    assert reloaded.draft_model is not None and reloaded.draft_model.config.num_hidden_layers == 2
    assert reloaded.speculation_config.num_assistant_tokens == 6
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(reloaded, ids), run(llama_plain, ids))
    assert max(reloaded.last_generation_stats.proposed_per_step) == 6
    assert reloaded.last_generation_stats.draft_tokens_accepted > 0


def test_saved_pair_root_is_a_plain_optimum_intel_model(llama_pair, llama_plain, llama_speculative, tmp_path):
    from optimum.intel import OVModelForCausalLM

    from optimum_dynexec.models.registration import original_from_pretrained

    llama_speculative.save_pretrained(tmp_path / "pair")
    alone = original_from_pretrained(OVModelForCausalLM, tmp_path / "pair", ov_config=F32)
    assert type(alone) is OVModelForCausalLM
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(alone, ids), run(llama_plain, ids))


def test_saving_over_an_existing_pair_replaces_it(llama_pair, llama_speculative, tmp_path):
    destination = tmp_path / "pair"
    destination.mkdir()
    (destination / "stale.txt").write_text("old")
    llama_speculative.save_pretrained(destination)
    assert not (destination / "stale.txt").exists()
    assert (destination / "openvino_model.xml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["pair"]  # no temporary directories left behind


def test_saved_prompt_lookup_pair_loads_back(llama_pair, llama_plain, tmp_path):
    from optimum.intel import OVModelForCausalLM

    load_speculative(llama_pair.target_dir, draft="prompt-lookup").save_pretrained(tmp_path / "pair")
    assert not (tmp_path / "pair" / "draft").exists()
    reloaded = OVModelForCausalLM.from_pretrained(tmp_path / "pair", ov_config=F32)
    assert reloaded.draft_kind == "prompt-lookup" and reloaded.draft_model is None
    phrase = list(range(10, 17))
    ids = torch.tensor([phrase + [40] + phrase + [50] + phrase[:3]])
    assert torch.equal(run(reloaded, ids), run(llama_plain, ids))
    assert reloaded.last_generation_stats.draft_tokens_accepted > 0


def test_saved_int4_self_pair_keeps_the_compressed_draft(llama_pair, llama_plain, loaded, tmp_path):
    from optimum.intel import OVModelForCausalLM

    from optimum_dynexec.exporters.weight_compression import has_compressed_weights

    model = loaded(("int4-self", "llama"), lambda: load_speculative(llama_pair.target_dir, draft="int4-self"))
    model.save_pretrained(tmp_path / "pair")
    reloaded = OVModelForCausalLM.from_pretrained(tmp_path / "pair", ov_config=F32)
    assert has_compressed_weights(reloaded.draft_model.model)
    assert not has_compressed_weights(reloaded.model)
    ids = free_running_prompt(llama_plain, llama_pair.vocab_size)
    assert torch.equal(run(reloaded, ids, num_assistant_tokens=4), run(llama_plain, ids))
    assert reloaded.last_generation_stats.acceptance_rate > 0.3

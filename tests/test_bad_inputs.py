"""Wrong inputs fail with errors that name the problem (and documented fallbacks behave as documented)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList, MinLengthLogitsProcessor

import optimum_dynexec

from conftest import (
    EOS_ID,
    F32,
    MAX_POSITIONS,
    build_target,
    copy_model_dir,
    export_openvino,
    load_plain,
    load_speculative,
    make_tokenizer,
)


def prompt(vocab_size: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(4, vocab_size, (1, length)))


def run(model, ids, **kwargs):
    kwargs.setdefault("max_new_tokens", 12)
    kwargs.setdefault("attention_mask", torch.ones_like(ids))
    return model.generate(input_ids=ids, **kwargs)


@pytest.fixture(scope="module")
def stateless_draft_dir(llama_pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("stateless") / "draft"
    return export_openvino(llama_pair.draft_checkpoint, out, llama_pair.tokenizer, stateful=False)


@pytest.fixture(scope="module")
def other_vocab_draft_dir(tmp_path_factory):
    """A draft over 200 ids next to the 160-id llama target, without tokenizer files."""
    root = tmp_path_factory.mktemp("other_vocab")
    build_target("llama", 200, num_layers=1, draft_layers=1, seed=3).save_pretrained(root / "checkpoint")
    return export_openvino(root / "checkpoint", root / "ov")


@pytest.fixture(scope="module")
def other_tokenizer_draft_dir(llama_pair, tmp_path_factory):
    """The llama draft with a different tokenizer of the same size (other merges)."""
    out = copy_model_dir(llama_pair.draft_dir, tmp_path_factory.mktemp("other_tokenizer") / "draft",
                         skip=("tokenizer.json", "tokenizer_config.json"))
    make_tokenizer(llama_pair.vocab_size, seed=1).save_pretrained(out)
    return out


# ---------------------------------------------------------------- incompatible drafts


def test_draft_with_a_different_tokenizer_is_refused(llama_pair, other_tokenizer_draft_dir):
    with pytest.raises(ValueError, match="draft's tokenizer .* differs from the target's") as error:
        load_speculative(llama_pair.target_dir, draft_model=other_tokenizer_draft_dir)
    assert "same tokenizer" in str(error.value) or "identical token ids" in str(error.value)


def test_draft_with_a_different_eos_token_is_refused(llama_pair, tmp_path):
    out = copy_model_dir(llama_pair.draft_dir, tmp_path / "draft", skip=("tokenizer.json", "tokenizer_config.json"))
    tokenizer = make_tokenizer(llama_pair.vocab_size)
    tokenizer.eos_token = "<s>"
    tokenizer.save_pretrained(out)
    with pytest.raises(ValueError, match="eos token"):
        load_speculative(llama_pair.target_dir, draft_model=out)


def test_draft_with_other_vocabulary_size_and_no_tokenizer_is_refused(llama_pair, other_vocab_draft_dir):
    with pytest.raises(ValueError, match=r"vocabulary size \(200\) differs from the target's \(160\)"):
        load_speculative(llama_pair.target_dir, draft_model=other_vocab_draft_dir)


def test_assistant_model_with_a_different_tokenizer_is_refused(llama_pair, llama_speculative,
                                                               other_tokenizer_draft_dir):
    other = load_plain(other_tokenizer_draft_dir)
    with pytest.raises(ValueError, match="tokenizer"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), assistant_model=other)


def test_stateless_draft_is_refused(llama_pair, stateless_draft_dir):
    with pytest.raises(ValueError, match="stateless.*stateful=True"):
        load_speculative(llama_pair.target_dir, draft_model=stateless_draft_dir)


# ---------------------------------------------------------------- missing / broken files


def test_missing_target_directory_is_named(llama_pair, tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="target directory .*does_not_exist does not exist"):
        load_speculative(missing, draft_model=llama_pair.draft_dir)
    with pytest.raises(FileNotFoundError, match="target directory .*does_not_exist does not exist"):
        load_speculative(str(missing), draft_model=llama_pair.draft_dir)


def test_missing_draft_directory_is_named(llama_pair, tmp_path):
    missing = tmp_path / "no_draft_here"
    with pytest.raises(FileNotFoundError, match="draft directory .*no_draft_here does not exist"):
        load_speculative(llama_pair.target_dir, draft_model=str(missing))


def test_draft_pointing_to_the_xml_file_is_named(llama_pair):
    with pytest.raises(FileNotFoundError, match="openvino_model.xml is a file, not a directory"):
        load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir / "openvino_model.xml")


@pytest.mark.parametrize("role", ["target", "draft"])
def test_missing_openvino_model_xml(llama_pair, tmp_path, role):
    source = llama_pair.target_dir if role == "target" else llama_pair.draft_dir
    broken = copy_model_dir(source, tmp_path / role, skip=("openvino_model.xml",))
    paths = {"target": llama_pair.target_dir, "draft": llama_pair.draft_dir, role: broken}
    with pytest.raises(FileNotFoundError, match=f"{role} directory .* has no openvino_model.xml"):
        load_speculative(paths["target"], draft_model=paths["draft"])


def test_missing_weights_bin(llama_pair, tmp_path):
    broken = copy_model_dir(llama_pair.draft_dir, tmp_path / "draft", skip=("openvino_model.bin",))
    with pytest.raises(FileNotFoundError, match="no openvino_model.bin"):
        load_speculative(llama_pair.target_dir, draft_model=broken)


def test_missing_config_json(llama_pair, tmp_path):
    broken = copy_model_dir(llama_pair.target_dir, tmp_path / "target", skip=("config.json",))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_speculative(broken, draft_model=llama_pair.draft_dir)


@pytest.mark.parametrize("role", ["target", "draft"])
def test_corrupt_xml(llama_pair, tmp_path, role):
    source = llama_pair.target_dir if role == "target" else llama_pair.draft_dir
    broken = copy_model_dir(source, tmp_path / role)
    (broken / "openvino_model.xml").write_text("<?xml version='1.0'?>\n<net name='x'><layers><layer id=")
    paths = {"target": llama_pair.target_dir, "draft": llama_pair.draft_dir, role: broken}
    with pytest.raises(ValueError, match=f"could not read the {role} OpenVINO model .*corrupt"):
        load_speculative(paths["target"], draft_model=paths["draft"])


def test_truncated_weights_bin(llama_pair, tmp_path):
    broken = copy_model_dir(llama_pair.draft_dir, tmp_path / "draft")
    weights = broken / "openvino_model.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="could not read the draft OpenVINO model"):
        load_speculative(llama_pair.target_dir, draft_model=broken)


def test_transformers_checkpoint_without_export_asks_for_export(llama_pair):
    with pytest.raises(FileNotFoundError, match="transformers checkpoint: pass export=True"):
        load_speculative(llama_pair.target_checkpoint, draft_model=llama_pair.draft_dir)
    with pytest.raises(FileNotFoundError, match="transformers checkpoint: pass export=True"):
        load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_checkpoint)


def test_export_of_a_directory_without_config_is_refused(llama_pair, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json, so it is not a transformers checkpoint"):
        load_speculative(tmp_path / "empty", export=True, draft_model=llama_pair.draft_dir)


# ---------------------------------------------------------------- from_pretrained arguments


def test_unknown_draft_string(llama_pair):
    with pytest.raises(ValueError, match=r"unknown draft='int3-self'.*int4-self.*prompt-lookup"):
        load_speculative(llama_pair.target_dir, draft="int3-self")


def test_draft_and_draft_model_together(llama_pair):
    with pytest.raises(ValueError, match="either draft_model=... or draft=..., not both"):
        load_speculative(llama_pair.target_dir, draft="int4-self", draft_model=llama_pair.draft_dir)


def test_draft_model_of_a_wrong_type(llama_pair):
    with pytest.raises(TypeError, match="draft_model must be a path, a hub id or an OVModelForCausalLM"):
        load_speculative(llama_pair.target_dir, draft_model=42)


def test_unknown_speculation_option(llama_pair):
    with pytest.raises(ValueError, match=r"unknown speculation option\(s\) \['lookahead_size'\]"):
        load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir, speculation={"lookahead_size": 3})


# ---------------------------------------------------------------- generate arguments


@pytest.mark.parametrize("value", [0, -2])
def test_num_assistant_tokens_below_one(llama_pair, llama_speculative, value):
    with pytest.raises(ValueError, match=f"num_assistant_tokens must be >= 1, got {value}"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), num_assistant_tokens=value)


def test_unknown_schedule(llama_pair, llama_speculative):
    with pytest.raises(ValueError, match="Unknown num_assistant_tokens_schedule='fast'"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), num_assistant_tokens_schedule="fast")


def test_confidence_threshold_out_of_range(llama_pair, llama_speculative):
    with pytest.raises(ValueError, match=r"assistant_confidence_threshold must be in \[0, 1\), got 1.5"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), assistant_confidence_threshold=1.5)


def test_heuristic_schedule_with_confidence_threshold(llama_pair, llama_speculative):
    with pytest.raises(ValueError, match="cannot be combined"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), num_assistant_tokens_schedule="heuristic",
            assistant_confidence_threshold=0.5)


def test_prompt_longer_than_the_model_positions(llama_pair, llama_speculative):
    ids = prompt(llama_pair.vocab_size, MAX_POSITIONS + 44)
    with pytest.raises(ValueError, match=f"the prompt has {MAX_POSITIONS + 44} tokens but the model supports "
                                         f"{MAX_POSITIONS} positions"):
        run(llama_speculative, ids, num_assistant_tokens=3)


def test_generation_stops_at_the_model_positions(llama_pair, llama_plain, llama_speculative, caplog):
    ids = prompt(llama_pair.vocab_size, MAX_POSITIONS - 6, seed=4)
    with caplog.at_level("WARNING"):
        output = run(llama_speculative, ids, max_new_tokens=20, num_assistant_tokens=4, eos_token_id=None)
    assert output.shape[1] == MAX_POSITIONS
    assert "exceeds the 256 positions" in caplog.text
    expected = run(llama_plain, ids, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(output, expected)


def test_empty_prompt_is_refused(llama_pair, llama_speculative):
    ids = prompt(llama_pair.vocab_size, 4)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        run(llama_speculative, ids, attention_mask=torch.zeros_like(ids))


def test_stop_strings_without_tokenizer(llama_pair, llama_speculative):
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), stop_strings=["ab"], num_assistant_tokens=3)


# ---------------------------------------------------------------- documented fallbacks: target alone, with a warning


def test_beam_search_runs_the_target_alone_with_a_warning(llama_pair, llama_plain, llama_speculative):
    ids = prompt(llama_pair.vocab_size, 5, seed=2)
    kwargs = dict(num_beams=3, do_sample=False, max_new_tokens=10)
    expected = run(llama_plain, ids, **kwargs)
    with pytest.warns(UserWarning, match=r"running the target alone.*beam search \(num_beams=3\)"):
        actual = run(llama_speculative, ids, num_assistant_tokens=4, **kwargs)
    assert torch.equal(actual, expected)
    assert llama_speculative.last_generation_stats is None


def test_unsupported_processor_option_runs_the_target_alone(llama_pair, llama_plain, llama_speculative):
    ids = prompt(llama_pair.vocab_size, 5, seed=2)
    kwargs = dict(no_repeat_ngram_size=2, do_sample=False, max_new_tokens=20)
    expected = run(llama_plain, ids, **kwargs)
    assert not torch.equal(expected, run(llama_plain, ids, do_sample=False, max_new_tokens=20))
    with pytest.warns(UserWarning, match="does not implement no_repeat_ngram_size=2"):
        actual = run(llama_speculative, ids, num_assistant_tokens=4, **kwargs)
    assert torch.equal(actual, expected)


def test_custom_logits_processor_runs_the_target_alone(llama_pair, llama_plain, llama_speculative):
    ids = prompt(llama_pair.vocab_size, 5, seed=2)
    processors = LogitsProcessorList([MinLengthLogitsProcessor(5 + 8, EOS_ID)])
    expected = run(llama_plain, ids, logits_processor=processors, do_sample=False)
    with pytest.warns(UserWarning, match="custom logits processors"):
        actual = run(llama_speculative, ids, logits_processor=processors, do_sample=False, num_assistant_tokens=4)
    assert torch.equal(actual, expected)


def test_speculative_class_without_a_draft_runs_the_target_quietly(llama_pair, llama_plain, loaded):
    """No draft at all is not an error: the model is the target, with upstream output and no warning."""
    model = loaded(("no-draft", "llama"), lambda: optimum_dynexec.OVSpeculativeModelForCausalLM.from_pretrained(
        llama_pair.target_dir, ov_config=F32))
    ids = prompt(llama_pair.vocab_size, 5, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        actual = run(model, ids, do_sample=False)
    assert torch.equal(actual, run(llama_plain, ids, do_sample=False))
    assert model.last_generation_stats is None


# ---------------------------------------------------------------- saved pairs


@pytest.fixture
def saved_pair(llama_speculative, tmp_path):
    llama_speculative.save_pretrained(tmp_path / "pair")
    return tmp_path / "pair"


def test_saved_pair_without_its_draft_folder(saved_pair):
    import shutil

    shutil.rmtree(saved_pair / "draft")
    with pytest.raises(FileNotFoundError, match=r"names a 'model' draft in .*draft, which is missing"):
        load_speculative(saved_pair)


def test_saved_pair_with_a_corrupt_config(saved_pair):
    (saved_pair / "dynexec_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="dynexec_config.json is not valid JSON"):
        load_speculative(saved_pair)


def test_saved_pair_from_a_newer_version(saved_pair):
    import json

    path = saved_pair / "dynexec_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), version=99)))
    with pytest.raises(ValueError, match="has version 99.*upgrade optimum-dynexec"):
        load_speculative(saved_pair)


@pytest.mark.parametrize("option", ["output_logits", "output_hidden_states"])
def test_outputs_the_loop_cannot_give_run_the_target_alone(llama_pair, llama_plain, llama_speculative, option):
    ids = prompt(llama_pair.vocab_size, 5, seed=2)
    kwargs = {"return_dict_in_generate": True, option: True, "do_sample": False, "max_new_tokens": 6}
    expected = run(llama_plain, ids, **kwargs)
    with pytest.warns(UserWarning, match=f"does not return {option}"):
        actual = run(llama_speculative, ids, num_assistant_tokens=3, **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    if option == "output_logits":
        assert len(actual.logits) == len(expected.logits) == 6
        for mine, theirs in zip(actual.logits, expected.logits):
            torch.testing.assert_close(mine, theirs)


def test_misspelled_generate_argument_is_reported(llama_pair, llama_speculative):
    with pytest.raises(ValueError, match=r"not used by the model: \['num_assistant_token'\]"):
        run(llama_speculative, prompt(llama_pair.vocab_size, 3), num_assistant_token=3)


def test_int4_self_draft_of_an_already_compressed_target(llama_pair, loaded, tmp_path):
    model = loaded(("int4-self", "llama"), lambda: load_speculative(llama_pair.target_dir, draft="int4-self"))
    model.draft_model.save_pretrained(tmp_path / "int4_target")  # an INT4 export used as the target
    with pytest.raises(ValueError, match="already compressed.*draft_model="):
        load_speculative(tmp_path / "int4_target", draft="int4-self")

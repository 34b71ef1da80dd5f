"""A cheaper draft: vocabulary-pruned LM head (FR-Spec) and tuned runtime properties, on the tiny exported pairs.

The kept set is chosen small enough (64 of 160 / 192 tokens) that the target often writes tokens the draft
cannot propose; the output must stay the target's own and sampling must keep the target's distribution.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest
import torch

from conftest import F32, EOS_ID, chi_square_pvalue, load_plain, load_speculative
from optimum_dynexec.backends.openvino_draft import draft_runtime_properties, logits_width, prune_vocabulary
from optimum_dynexec.exporters.weight_compression import weights_int4_group_size
from optimum_dynexec.speculative.vocabulary import draft_vocabulary, ranked_tokens
from test_speculative_greedy import assert_same, long_prompt, run
from test_speculative_sampling import ALPHA, exact_pair_distribution, prompt, sampled_pairs

KEEP = 64


@pytest.fixture
def pruned(pair, loaded):
    return loaded(("speculative-pruned", pair.arch),
                  lambda: load_speculative(pair.target_dir, draft_model=pair.draft_dir,
                                           speculation={"draft_vocab_size": KEEP}))


def _logits(compiled: ov.CompiledModel, ids: np.ndarray) -> np.ndarray:
    request = compiled.create_infer_request()
    request.infer({"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64),
                   "position_ids": np.arange(len(ids))[None], "beam_idx": np.zeros(1, np.int32)})
    return request.get_tensor("logits").data[0].copy()


@pytest.mark.parametrize("weights", ["f32", "compressed"])
def test_pruned_head_returns_the_kept_columns_of_the_full_logits(pair, weights):
    """Plain f32 head, and a compressed one (int8/int4 constants + Convert/Subtract/Multiply decompression)."""
    from optimum_dynexec.exporters.weight_compression import compress_to_int4

    core = ov.Core()
    model = core.read_model(pair.draft_dir / "openvino_model.xml")
    if weights == "compressed":
        model = compress_to_int4(model, hidden_size=64)
    keep = np.sort(np.random.default_rng(0).choice(pair.vocab_size, 50, replace=False))
    smaller = prune_vocabulary(model, keep)
    assert logits_width(smaller) == 50 and logits_width(model) == pair.vocab_size  # the original is untouched
    ids = np.random.default_rng(1).integers(4, pair.vocab_size, 9)
    full = _logits(core.compile_model(model, "CPU", F32), ids)
    part = _logits(core.compile_model(smaller, "CPU", F32), ids)
    np.testing.assert_allclose(part, full[:, keep], rtol=1e-5, atol=1e-5)


def test_pruning_refuses_ids_outside_the_vocabulary(pair):
    model = ov.Core().read_model(pair.draft_dir / "openvino_model.xml")
    with pytest.raises(ValueError, match=r"within \[0, "):
        prune_vocabulary(model, np.array([0, pair.vocab_size]))
    with pytest.raises(ValueError, match="non-empty"):
        prune_vocabulary(model, np.array([], dtype=np.int64))


@pytest.mark.parametrize("k", [3, 8])
def test_pruned_draft_keeps_greedy_output_exact(pair, plain, pruned, k):
    ids = long_prompt(plain, pair.vocab_size, 5, seed=5)
    expected = run(plain, ids)
    assert_same(run(pruned, ids, num_assistant_tokens=k), expected)
    runner, vocabulary = pruned._draft_runner(pruned.draft_model)
    assert len(vocabulary) == KEEP and EOS_ID in vocabulary
    # the situation under test happened: the target wrote tokens the draft could not propose
    assert not np.isin(expected[0, 5:].numpy(), vocabulary).all()
    stats = pruned.last_generation_stats
    assert 0 < stats.draft_tokens_accepted < stats.draft_tokens_proposed
    assert runner.vocab_size == KEEP


def test_pruned_draft_is_compiled_once(pair, plain, pruned):
    """The pruned graph is the draft's own compiled model: building it again on every generate() would cost a
    compile and a cold first inference each call (this once made the tuned draft slower than the loaded one)."""
    ids = long_prompt(plain, pair.vocab_size, 5, seed=6)
    run(pruned, ids, num_assistant_tokens=3)
    first = pruned._draft_runner(pruned.draft_model)[0]
    run(pruned, ids, num_assistant_tokens=3)
    assert pruned._draft_runner(pruned.draft_model)[0] is first
    assert first.request is not pruned.draft_model.request  # it really is a separately compiled graph


def test_pruned_draft_keeps_the_sampling_distribution(llama_pair, llama_plain, loaded):
    model = loaded(("speculative-pruned", "llama"),
                   lambda: load_speculative(llama_pair.target_dir, draft_model=llama_pair.draft_dir,
                                            speculation={"draft_vocab_size": KEEP}))
    options = {"top_k": 0, "temperature": 0.8}
    ids = prompt(llama_pair.vocab_size, seed=2)
    cells = sampled_pairs(model, ids, options, num_assistant_tokens=2)
    assert model.last_generation_stats.draft_tokens_accepted > 0
    assert chi_square_pvalue(cells, exact_pair_distribution(llama_plain, ids, options)) > ALPHA


def test_vocabulary_keeps_required_then_ranked_then_tokenizer_order():
    kept = draft_vocabulary(1000, 10, ranked=[900, 901, 5, 900], required=[999])
    assert kept.tolist() == [0, 1, 2, 3, 4, 5, 6, 900, 901, 999]
    assert draft_vocabulary(1000, 600) is None  # under twice the budget: not worth a smaller head
    assert draft_vocabulary(1000, None) is None and draft_vocabulary(1000, 0) is None
    assert ranked_tokens([[3, 3, 7], [7, 7, 1]], limit=2) == [7, 3]


def test_draft_runtime_properties_match_int4_groups_on_cpu(llama_pair):
    from optimum_dynexec.exporters.weight_compression import compress_to_int4

    model = ov.Core().read_model(llama_pair.draft_dir / "openvino_model.xml")
    assert weights_int4_group_size(model) is None and draft_runtime_properties(model, "CPU", {}) == {}
    compressed = compress_to_int4(model, hidden_size=64)
    group = weights_int4_group_size(compressed)
    assert group in (16, 32, 64)
    expected = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": str(group)} if group > 32 else {}
    assert draft_runtime_properties(compressed, "CPU", {}) == expected
    assert draft_runtime_properties(compressed, "CPU", F32) == F32  # the caller's choice wins
    assert draft_runtime_properties(compressed, "GPU", {}) == {}
    compressed.set_rt_info("16", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    assert draft_runtime_properties(compressed, "CPU", {}) == {}  # and so does the IR's


def test_auto_dq_group_size_follows_the_weights_and_keeps_the_irs_choice(llama_pair, tmp_path):
    """``--dq-group-size auto``: the int4 weights' group size (when above OpenVINO's 32), 128 for per-channel
    weights, nothing for floating point; an IR that already asks for a size keeps it, a given size replaces it."""
    import nncf

    from optimum_dynexec.exporters.runtime_options import auto_dq_group_size, dq_group_size_of, write_dq_group_size
    from optimum_dynexec.exporters.weight_compression import compress_to_int4

    model = ov.Core().read_model(llama_pair.draft_dir / "openvino_model.xml")
    assert auto_dq_group_size(model) is None
    compressed = compress_to_int4(model, hidden_size=64)
    group = weights_int4_group_size(compressed)
    assert auto_dq_group_size(compressed) == (group if group > 32 else None)
    int8 = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    assert weights_int4_group_size(int8) is None and auto_dq_group_size(int8) == 128

    directory = tmp_path / "ir"
    directory.mkdir()
    ov.save_model(compressed, directory / "openvino_model.xml", compress_to_fp16=False)
    read = lambda: dq_group_size_of(ov.Core().read_model(directory / "openvino_model.xml"))  # noqa: E731
    assert write_dq_group_size(directory, "auto") == auto_dq_group_size(compressed) == read()
    assert write_dq_group_size(directory, 16) == 16 == read()
    assert write_dq_group_size(directory, "auto") == 16 == read()  # the IR's own choice stands
    assert write_dq_group_size(directory, 0) == 0 == read()
    assert sorted(p.name for p in directory.iterdir()) == ["openvino_model.bin", "openvino_model.xml"]


def test_speculative_target_gets_the_groups_export_would_write(llama_pair, tmp_path):
    """A target whose IR asks for no group size (``optimum-cli export openvino``) is compiled by the speculative
    model's paged runner with the groups ``export dynexec`` would write; the caller's ``ov_config`` and the IR's own
    choice win; floating-point targets, other devices and the stateful KV cache are left alone."""
    import shutil

    import nncf

    from optimum_dynexec import OVSpeculativeModelForCausalLM
    from optimum_dynexec.exporters.runtime_options import runtime_properties

    target = tmp_path / "int8"  # the IR written anew (the original's weights are memory-mapped while read)
    shutil.copytree(llama_pair.target_dir, target, ignore=shutil.ignore_patterns("openvino_model.*"))
    model = ov.Core().read_model(llama_pair.target_dir / "openvino_model.xml")
    assert runtime_properties(model, "CPU", {}) == {}  # floating point
    int8 = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(int8, target / "openvino_model.xml", compress_to_fp16=False)
    del int8, model

    def compiled_group(**kwargs) -> int:
        speculative = OVSpeculativeModelForCausalLM.from_pretrained(target, compile=False, **kwargs)
        runner = speculative._runner(speculative)
        return int(runner.request.get_compiled_model().get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))

    assert compiled_group() == 128
    assert compiled_group(ov_config={"DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}) == 64
    default = int(ov.Core().get_property("CPU", "DYNAMIC_QUANTIZATION_GROUP_SIZE"))
    assert compiled_group(kv_cache="stateful") == default  # the model's own compiled request, not a second copy
    int8 = ov.Core().read_model(target / "openvino_model.xml")
    assert runtime_properties(int8, "GPU", {}) == {}
    int8.set_rt_info("16", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    assert runtime_properties(int8, "CPU", {}) == {}  # the IR's own choice, applied by OpenVINO

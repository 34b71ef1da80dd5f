"""benchmarks/: time to the first tokens and the decode rate of every family, and the dynamic-lookahead summary."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.methods import _FirstTokensClock, _optimum_baseline
from benchmarks.report import _dynamic_lines, dynamic_lookahead_rows, markdown_table, summarize


def test_optimum_intel_generate_is_timed_from_its_first_streamed_token(llama_pair, llama_plain):
    run = _optimum_baseline(llama_plain, max_new_tokens=12)
    prompt = np.random.default_rng(0).integers(4, llama_pair.vocab_size, 9).astype(np.int64)
    generation = run(prompt)
    assert len(generation.tokens) == 12
    # transformers streams the prompt first, then one token per step: 11 tokens after the first
    assert generation.decode_tokens == 11
    assert 0 < generation.decode_seconds < generation.seconds
    assert generation.first_tokens_seconds == pytest.approx(generation.seconds - generation.decode_seconds)
    assert generation.decode_tokens_per_second == pytest.approx(11 / generation.decode_seconds)


def test_a_generate_that_streamed_nothing_has_no_decode_rate():
    generation = _FirstTokensClock().generation([1, 2, 3], start=0.0, end=1.0)
    assert generation.tokens_per_second == pytest.approx(3.0)
    assert generation.decode_tokens_per_second is None and generation.first_tokens_seconds is None


def _record(method_id: str, tokens_per_second: float, decode: float, **fields) -> dict:
    run = {"new_tokens": 128, "tokens_per_second": tokens_per_second, "decode_tokens_per_second": decode,
           "first_tokens_seconds": 0.5, "stats": None}
    return {"id": method_id, "status": "ok", "policy": "-", "family": "genai" if "genai" in method_id else "ours",
            "per_prompt": {"p": {"runs": [run], "tokens": [1], "median_tokens_per_second": tokens_per_second,
                                 "median_decode_tokens_per_second": decode, "median_first_tokens_seconds": 0.5}},
            **fields}


def test_dynamic_rows_are_compared_with_the_best_static_k_of_their_draft_chosen_after_the_fact():
    ours = {"type": "ours", "draft": "pair"}
    results = {"methods": [
        _record("ours/target-only", 10.0, 11.0, type="ours-target-only"),
        _record("ours/pair/k=2", 20.0, 24.0, schedule="constant", k=2, **ours),
        _record("ours/pair/k=4", 21.0, 23.0, schedule="constant", k=4, **ours),  # best end to end, not in decode
        _record("ours/pair/conf", 30.0, 40.0, schedule="constant", k=10, confidence=0.4, **ours),  # not static
        _record("ours/other/k=2", 40.0, 50.0, type="ours", draft="other", schedule="constant", k=2),  # other draft
        _record("ours/pair/disco", 23.1, 26.4, schedule="disco", k=10, **ours),
        _record("genai-spec/pair/k=3", 15.0, 16.0, type="genai-spec", draft="pair"),
        _record("genai-spec/other/k=3", 35.0, 36.0, type="genai-spec", draft="other"),
        _record("ours-lookup/k=3", 12.0, 13.0, type="ours-lookup", draft=None, schedule="constant", k=3),
        _record("ours-lookup/cost/k=8", 13.2, 13.0, type="ours-lookup", draft=None, schedule="cost", k=8),
    ]}
    summarize(results)
    rows = {row["id"]: row for row in dynamic_lookahead_rows(results)}
    assert set(rows) == {"ours/pair/disco", "ours-lookup/cost/k=8"}
    disco = rows["ours/pair/disco"]
    assert disco["tokens_per_second:best_static"] == ("ours/pair/k=4", pytest.approx(1.1))
    assert disco["decode_tokens_per_second:best_static"] == ("ours/pair/k=2", pytest.approx(1.1))
    assert disco["tokens_per_second:genai_best"] == ("genai-spec/pair/k=3", pytest.approx(23.1 / 15.0))
    assert disco["decode_tokens_per_second:target_alone"] == ("ours/target-only", pytest.approx(2.4))
    lookup = rows["ours-lookup/cost/k=8"]
    assert lookup["tokens_per_second:best_static"] == ("ours-lookup/k=3", pytest.approx(1.1))
    assert "tokens_per_second:genai_best" not in lookup  # no GenAI prompt-lookup row in this run
    text = "\n".join(_dynamic_lines(results))
    assert "| ours/pair/disco | 23.1 | 1.10 (ours/pair/k=4) |" in text
    # the main table carries the decode rate and the time to the first tokens
    line = next(line for line in markdown_table(results).splitlines() if line.startswith("| ours/pair/disco "))
    assert "| 23.1 | 26.4 | 500 |" in line


def _two_prompt_record(method_id: str, rates: tuple[float, float], **fields) -> dict:
    """A record over a fast and a slow prompt, 100 new tokens each, the first token after 0.5 s."""
    per_prompt = {}
    for name, rate in zip(("fast", "slow"), rates):
        seconds = 100 / rate
        run = {"new_tokens": 100, "tokens_per_second": rate, "first_tokens_seconds": 0.5,
               "decode_tokens_per_second": 99 / (seconds - 0.5), "stats": None}
        per_prompt[name] = {"runs": [run], "tokens": [1], "median_run": 0, "median_tokens_per_second": rate,
                            "median_decode_tokens_per_second": run["decode_tokens_per_second"],
                            "median_first_tokens_seconds": 0.5}
    return {"id": method_id, "status": "ok", "policy": "-", "family": "ours", "per_prompt": per_prompt, **fields}


def test_summed_rates_weigh_prompts_by_their_time_and_pick_their_own_best_static_k():
    ours = {"type": "ours", "draft": "pair"}
    results = {"methods": [
        # k=5 wins the fast prompt by much and loses the slow one: the best by mean of rates, not by summed time
        _two_prompt_record("ours/pair/k=3", (40.0, 20.0), schedule="constant", k=3, **ours),
        _two_prompt_record("ours/pair/k=5", (50.0, 16.0), schedule="constant", k=5, **ours),
        _two_prompt_record("ours/pair/disco", (45.0, 22.0), schedule="disco", k=10, **ours),
    ]}
    summarize(results)
    k3 = results["methods"][0]["summary"]
    assert k3["summed_tokens_per_second"] == pytest.approx(200 / (100 / 40 + 100 / 20))
    assert k3["summed_decode_tokens_per_second"] == pytest.approx(198 / (100 / 40 + 100 / 20 - 1.0))
    disco = dynamic_lookahead_rows(results)[0]
    assert disco["tokens_per_second:best_static"] == ("ours/pair/k=5", pytest.approx(33.5 / 33.0))
    summed_k3 = 200 / (2.5 + 5.0)
    summed_disco = 200 / (100 / 45 + 100 / 22)
    assert disco["summed_tokens_per_second:best_static"] == ("ours/pair/k=3", pytest.approx(summed_disco / summed_k3))
    text = "\n".join(_dynamic_lines(results))
    assert f"| ours/pair/disco | {summed_disco:.1f} | {summed_disco / summed_k3:.2f} (ours/pair/k=3) | - |" in text


def test_a_run_without_a_decode_split_has_no_summed_decode_rate():
    record = _two_prompt_record("genai", (40.0, 20.0), type="genai")
    record["per_prompt"]["slow"]["runs"][0]["decode_tokens_per_second"] = None
    summarize({"methods": [record]})
    assert "summed_decode_tokens_per_second" not in record["summary"]
    assert record["summary"]["summed_tokens_per_second"] == pytest.approx(200 / 7.5)


def test_the_models_line_names_a_group_size_the_ir_asks_for(tmp_path):
    """A model whose IR sets DYNAMIC_QUANTIZATION_GROUP_SIZE (as int8 targets exported here do) says so in
    results.md, since the plugin's default printed above it no longer applies to that model."""
    import openvino as ov
    from openvino import opset13

    from benchmarks.report import _dq_note
    from benchmarks.run import _ir_dq_group_sizes

    for name, size in (("target", "128"), ("draft", None)):
        parameter = opset13.parameter([1, 4], ov.Type.f32)
        model = ov.Model([opset13.relu(parameter)], [parameter])
        if size:
            model.set_rt_info(size, ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
        (tmp_path / name).mkdir()
        ov.save_model(model, tmp_path / name / "openvino_model.xml")
    sizes = _ir_dq_group_sizes({"target": tmp_path / "target", "draft": tmp_path / "draft", "gone": tmp_path / "x"})
    assert sizes == {"target": 128, "draft": None}
    results = {"models": {"dq_group_sizes": sizes}}
    assert _dq_note(results, "target") == " (its IR: DYNAMIC_QUANTIZATION_GROUP_SIZE=128)"
    assert _dq_note(results, "draft") == "" and _dq_note({}, "target") == ""

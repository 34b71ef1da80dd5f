"""benchmarks/methods.py: preset entries expand to rows whose generate options are what their ids say."""

from __future__ import annotations

import pytest

from benchmarks.methods import _ours_generate_kwargs, expand_methods

DRAFTS = {"pair": {}}


def test_target_first_rows_expand_beside_the_default_and_pass_the_option_to_generate():
    methods = expand_methods([{"type": "ours", "draft": "pair", "k": [4], "draft_after_first_token": [False, True]},
                              {"type": "ours", "draft": "pair", "schedule": "cost", "k": 10,
                               "draft_after_first_token": True}], DRAFTS)
    rows = {m.id: m for m in methods}
    assert set(rows) == {"ours/pair/k=4", "ours/pair/k=4/target-first", "ours/pair/cost/target-first"}
    assert _ours_generate_kwargs(rows["ours/pair/k=4"])["draft_after_first_token"] is False
    assert _ours_generate_kwargs(rows["ours/pair/k=4/target-first"]) == {
        "num_assistant_tokens": 4, "num_assistant_tokens_schedule": "constant", "draft_lookup_num_tokens": 3,
        "draft_after_first_token": True}
    cost = _ours_generate_kwargs(rows["ours/pair/cost/target-first"])
    assert cost["draft_after_first_token"] is True and cost["num_assistant_tokens_schedule"] == "cost"
    assert rows["ours/pair/k=4/target-first"].describe()["draft_after_first_token"] is True


@pytest.mark.parametrize("kind", ["genai-spec", "ours-lookup"])
def test_target_first_is_refused_where_no_draft_model_reads_the_prompt(kind):
    with pytest.raises(ValueError, match="draft_after_first_token applies to ours with a draft model only"):
        expand_methods([{"type": kind, "draft": "pair", "k": [4], "draft_after_first_token": True}], DRAFTS)

"""benchmarks/pricing.py: each row's own steps priced at one latency table (timing-noise-free policy comparison)."""

from __future__ import annotations

import pytest

from benchmarks.pricing import priced_rows, priced_tokens_per_second, row_widths
from optimum_dynexec.speculative.cost import LatencyModel

LATENCIES = {"draft_step_seconds": 0.01, "verify_seconds": [0.1, 0.11, 0.12, 0.13, 0.14, 0.15]}


def row(method_id: str, steps: list[tuple[int, int]], **fields) -> dict:
    """A results.json row of one prompt whose generation took ``steps`` (proposed, accepted), the first a prefill."""
    proposed, accepted = [p for p, _ in steps], [a for _, a in steps]
    stats = {"new_tokens": sum(a + 1 for a in accepted), "proposed_per_step": proposed, "accepted_per_step": accepted}
    return {"id": method_id, "status": "ok", "per_prompt": {"p": {"runs": [{"stats": stats}], "median_run": 0}},
            "summary": {"tokens_per_second": 1.0}, **fields}


def test_steps_are_priced_at_the_padded_width_without_the_prefill():
    latencies = LatencyModel.from_dict(LATENCIES)
    # prefill step (2 proposed, 2 accepted) left out; then 3 tokens proposed (1 accepted), 1 proposed (1 accepted)
    stats = {"new_tokens": 3 + 2 + 2, "proposed_per_step": [2, 3, 1], "accepted_per_step": [2, 1, 1]}
    exact = priced_tokens_per_second([stats], latencies)
    assert exact == pytest.approx(4 / ((3 * 0.01 + 0.13) + (0.01 + 0.11)))
    padded = priced_tokens_per_second([stats], latencies.with_widths((5,)))  # both calls verify 5 tokens
    assert padded == pytest.approx(4 / ((3 * 0.01 + 0.14) + (0.01 + 0.14)))
    assert priced_tokens_per_second([{"new_tokens": 1, "proposed_per_step": [0], "accepted_per_step": [0]}],
                                    latencies) is None  # a prefill alone prices nothing
    # free guesses in the padding: accepted beyond the drafts (the prefill's 2 + 2 free, the second step's 1 + 2)
    filled = {"new_tokens": 5 + 4 + 2, "proposed_per_step": [2, 1, 1], "accepted_per_step": [4, 3, 1]}
    assert priced_tokens_per_second([filled], latencies.with_widths((5,))) == pytest.approx(
        6 / ((0.01 + 0.14) + (0.01 + 0.14)))


def test_rows_are_priced_with_their_widths_and_compared_with_the_best_static_k():
    assert row_widths({"id": "ours/pair/k=3", "type": "ours", "draft": "pair", "schedule": "constant", "k": 3},
                      "pair", (2, 5)) == (4,)
    assert row_widths({"id": "ours/pair/k=9", "type": "ours", "draft": "pair", "schedule": "constant", "k": 9},
                      "pair", (2, 5)) == (6, 10)
    assert row_widths({"id": "c", "type": "ours", "draft": "pair", "schedule": "cost", "k": 10}, "pair", (2, 5)) == (1, 2, 5)
    assert row_widths({"id": "i", "type": "ours", "draft": "int4", "schedule": "constant", "k": 3}, "pair", ()) is None
    assert row_widths({"id": "h", "type": "ours", "draft": "pair", "schedule": "constant", "k": 10,
                       "confidence": 0.4}, "pair", ()) is None
    steady = [(0, 0)] + [(2, 2)] * 10  # every draft accepted
    results = {
        "calibrations": {"pair:k<=10": {"latencies": LATENCIES, "verification_widths": [2, 5]}},
        "methods": [
            row("baseline", steady, type="baseline"),
            row("ours/pair/k=1", [(0, 0)] + [(1, 1)] * 10, type="ours", draft="pair", schedule="constant", k=1),
            row("ours/pair/k=2", steady, type="ours", draft="pair", schedule="constant", k=2),
            row("ours/pair/disco", [(0, 0)] + [(4, 4)] * 5, type="ours", draft="pair", schedule="disco", k=10),
        ],
    }
    priced = priced_rows(results)
    assert set(priced["rows"]) == {"ours/pair/k=1", "ours/pair/k=2", "ours/pair/disco"}
    assert priced["best_static"] == "ours/pair/k=2"
    assert priced["rows"]["ours/pair/k=2"]["tokens_per_second"] == pytest.approx(3 / (0.02 + 0.12))
    # disco drafts 4 per step, verified at width 5: 5 tokens for 0.04 + 0.14 s
    assert priced["rows"]["ours/pair/disco"]["x_best_static"] == pytest.approx((5 / 0.18) / (3 / 0.14))
    assert priced_rows({**results, "calibrations": {}}) is None
    # several runs per prompt: only the last keeps its step lists, whichever run was the median
    for method in results["methods"]:
        record = method["per_prompt"]["p"]
        stepped = record["runs"][0]
        bare = {"stats": {k: v for k, v in stepped["stats"].items() if not k.endswith("_per_step")}}
        record["runs"], record["median_run"] = [bare, bare, stepped], 1
    again = priced_rows(results)
    assert {key: row["tokens_per_second"] for key, row in again["rows"].items()} == pytest.approx(
        {key: row["tokens_per_second"] for key, row in priced["rows"].items()})


def test_report_counts_draft_calls_per_draft_token():
    from benchmarks.report import markdown_table, summarize

    def method(method_id: str, stats: dict) -> dict:
        run = {"new_tokens": stats["new_tokens"], "tokens_per_second": 10.0, "stats": stats}
        return {"id": method_id, "type": "ours", "status": "ok", "policy": "constant",
                "per_prompt": {"p": {"median_tokens_per_second": 10.0, "runs": [run, run], "tokens": [1, 2]}}}

    guessing = method("ours/pair/k=4", {"new_tokens": 12, "target_calls": 4, "draft_calls": 9,
                                        "draft_tokens_proposed": 12, "draft_tokens_accepted": 7,
                                        "fill_tokens_proposed": 3, "fill_tokens_accepted": 1})
    one_per_token = method("ours/pair/k=4/guess=0", {"new_tokens": 12, "target_calls": 4, "draft_calls": 12,
                                                     "draft_tokens_proposed": 12, "draft_tokens_accepted": 8})
    lookup = method("ours-lookup/k=3", {"new_tokens": 12, "target_calls": 8, "draft_calls": 0, "draft_tokens_proposed": 6,
                                        "draft_tokens_accepted": 4})
    results = {"methods": [guessing, one_per_token, lookup]}
    summarize(results)
    assert guessing["summary"]["draft_calls_per_token"] == pytest.approx(0.75)
    assert one_per_token["summary"]["draft_calls_per_token"] == pytest.approx(1.0)
    assert "draft_calls_per_token" not in lookup["summary"]  # no draft model, nothing to count
    # one free guess kept in the padding over 4 target calls (2 runs alike); rows without the counter have no value
    assert guessing["summary"]["fill_accepted_per_call"] == pytest.approx(0.25)
    assert "fill_accepted_per_call" not in lookup["summary"]
    assert "| 0.25 |" in markdown_table(results).splitlines()[2]

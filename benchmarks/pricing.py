"""Lookahead policies compared without the machine's timing noise: every row's own steps priced at one latency table.

Under greedy decoding a row of our loop emits the same tokens in the same steps from run to run (the policies'
choices depend on the text, and "cost" also on the times it sees), but the wall time of one generation moves by
up to a third between identical runs on a shared 2-core machine. Pricing each decode step of a row (the draft
tokens it proposed, verified at the width the target ran at) with the latency table calibration measured
(one draft step; a target call over n tokens) gives a tokens/s that only the policy's choices decide. The
prefill step is left out: it is the same prompt for every row. Every draft token is priced as one draft step,
also where the draft's n-gram guesses (cascade drafting) saved its call: this section compares lookahead
choices, the measured rows show what the guesses save. Guesses verified in a call's padding cost nothing here
either (the call is priced at its width) and their accepted tokens count.
"""

from __future__ import annotations

from typing import Optional, Sequence

from optimum_dynexec.models.speculative import uncalibrated_widths
from optimum_dynexec.speculative.cost import LatencyModel


def row_widths(method: dict, draft: str, calibrated_widths: Sequence[int]) -> Optional[tuple[int, ...]]:
    """The input widths the target's calls of ``method`` ran at; None for rows this does not price (other
    drafts than the calibrated ``draft``, the heuristic or confidence schedules, whose widths follow their caps)."""
    if method["id"] == "ours/target-only":
        return (1,)
    if method.get("type") != "ours" or method.get("draft") != draft or method.get("confidence") is not None:
        return None
    if method.get("schedule") in ("disco", "cost"):
        widths = tuple(int(w) for w in calibrated_widths)
        return tuple(sorted({*widths, 1})) if method["schedule"] == "cost" else widths
    if method.get("schedule") == "constant" and method.get("k"):
        return uncalibrated_widths(int(method["k"]))
    return None


def priced_tokens_per_second(steps: Sequence[dict], latencies: LatencyModel) -> Optional[float]:
    """Mean over prompts of decode tokens / priced seconds; ``steps`` holds each prompt's generation statistics
    (``new_tokens``, ``proposed_per_step``, ``accepted_per_step``)."""
    rates = []
    for stats in steps:
        proposed, accepted = stats.get("proposed_per_step"), stats.get("accepted_per_step")
        if not proposed or len(proposed) < 2:
            continue
        tokens = stats["new_tokens"] - (accepted[0] + 1)  # accepted: drafts and free guesses in the padding
        seconds = sum(p * latencies.draft_step + latencies.verify_time(p + 1) for p in proposed[1:])
        if seconds > 0:
            rates.append(tokens / seconds)
    return sum(rates) / len(rates) if rates else None


def _stepped_stats(record: dict) -> dict:
    """The statistics of the run of one prompt that kept its per-step lists (the benchmark keeps them for the
    last run only: a median run of several has none)."""
    for run in reversed(record["runs"]):
        stats = run.get("stats") or {}
        if stats.get("proposed_per_step"):
            return stats
    return {}


def priced_rows(results: dict) -> Optional[dict]:
    """Priced tokens/s of every row it can price, with the ratio to the best static k among them, at the
    latencies of the run's (first) calibration; None when the run has no calibration or no static row."""
    calibrations = results.get("calibrations") or {}
    if not calibrations:
        return None
    key, calibration = next(iter(calibrations.items()))
    latencies = LatencyModel.from_dict(calibration["latencies"])
    draft = key.split(":")[0]  # "pair:k<=10": the draft's name in the preset
    rows = {}
    for method in results["methods"]:
        widths = row_widths(method, draft, calibration.get("verification_widths") or ())
        if method.get("status") != "ok" or widths is None:
            continue
        steps = [_stepped_stats(record) for record in method["per_prompt"].values()]
        rate = priced_tokens_per_second(steps, latencies.with_widths(widths))
        if rate is not None:
            rows[method["id"]] = {"tokens_per_second": rate, "widths": list(widths)}
    static = [row for row in rows if "/k=" in row]
    if not static:
        return None
    best = max(static, key=lambda row: rows[row]["tokens_per_second"])
    for row in rows.values():
        row["x_best_static"] = row["tokens_per_second"] / rows[best]["tokens_per_second"]
    return {"latencies_of": key, "latencies": calibration["latencies"], "best_static": best, "rows": rows}

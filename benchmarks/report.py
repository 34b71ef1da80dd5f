"""Summaries, the markdown report and the PNG plots of a benchmark run.

    python -m benchmarks.report benchmarks/results/<run>/     # rebuild results.md + plots from results.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from . import hardware

FAMILY_COLORS = {"optimum-intel": "#7f7f7f", "ours": "#1f77b4", "genai": "#ff7f0e", "transformers": "#d62728"}


# ------------------------------------------------------------------------------------------ summaries


def _agreement(reference: list[int], tokens: list[int]) -> dict:
    """First-divergence agreement: tokens equal until the first mismatch / the longer length."""
    prefix = 0
    for a, b in zip(reference, tokens):
        if a != b:
            break
        prefix += 1
    total = max(len(reference), len(tokens)) or 1
    return {"prefix_tokens": prefix, "fraction": prefix / total, "exact": reference == tokens}


def _ok(record: dict) -> bool:
    return record.get("status") == "ok" and bool(record.get("per_prompt"))


def add_reference_outputs(results: dict, tokenizer) -> None:
    """The baseline's decoded outputs (to eyeball that the prompts produce sensible text)."""
    baseline = next((m for m in results["methods"] if m["type"] == "baseline" and _ok(m)), None)
    if baseline is None:
        return
    results["reference_outputs"] = {
        name: tokenizer.decode(entry["tokens"], skip_special_tokens=False) for name, entry in baseline["per_prompt"].items()
    }


def _anchor_medians(results: dict, method: dict, anchor: str, fallback: Optional[dict]) -> dict[str, float]:
    """Per-prompt median tokens/s of ``anchor`` ("baseline" | "genai") in ``method``'s memory group (rows of an
    interleaved run in groups: see benchmarks.methods.memory_groups), else of ``fallback``'s row."""
    group = next((g for g in results.get("groups", []) if g["name"] == method.get("group")), None)
    if group is not None and anchor in group["anchors"]:
        return dict(group["anchors"][anchor])
    if fallback is None or not _ok(fallback):
        return {}
    return {n: e["median_tokens_per_second"] for n, e in fallback["per_prompt"].items()}


def _summed_rates(per_prompt: dict) -> dict[str, float]:
    """Tokens over seconds summed across the prompts (each prompt's median run), end to end and in decode: the rate
    of the whole workload, where the mean of per-prompt rates weighs every prompt alike however long it takes."""
    tokens = seconds = decode_tokens = decode_seconds = 0.0
    for entry in per_prompt.values():
        run = entry["runs"][entry.get("median_run", 0)]
        if not run.get("tokens_per_second"):
            return {}
        run_seconds = run["new_tokens"] / run["tokens_per_second"]
        tokens, seconds = tokens + run["new_tokens"], seconds + run_seconds
        if run.get("decode_tokens_per_second") and run.get("first_tokens_seconds") is not None:
            decode = run_seconds - run["first_tokens_seconds"]
            decode_tokens, decode_seconds = decode_tokens + run["decode_tokens_per_second"] * decode, decode_seconds + decode
        else:
            decode_seconds = float("nan")
    rates = {"summed_tokens_per_second": tokens / seconds} if seconds else {}
    if decode_seconds > 0:  # NaN (a run without a decode split) compares False
        rates["summed_decode_tokens_per_second"] = decode_tokens / decode_seconds
    return rates


def summarize(results: dict) -> None:
    """Add ``summary`` to every method record (rates, ratios, agreement) in place."""
    methods = results["methods"]
    baseline = next((m for m in methods if m["type"] == "baseline" and _ok(m)), None)
    genai = next((m for m in methods if m["type"] == "genai" and _ok(m)), None)
    reference = {n: e["tokens"] for n, e in baseline["per_prompt"].items()} if baseline else {}
    genai_reference = {n: e["tokens"] for n, e in genai["per_prompt"].items()} if genai else {}

    for m in methods:
        summary: dict[str, Any] = {}
        m["summary"] = summary
        if not _ok(m):
            continue
        per_prompt = m["per_prompt"]
        medians = {n: e["median_tokens_per_second"] for n, e in per_prompt.items()}
        summary["tokens_per_second"] = statistics.mean(medians.values())
        for name, key in (("decode_tokens_per_second", "median_decode_tokens_per_second"),
                          ("first_tokens_seconds", "median_first_tokens_seconds")):
            values = [e.get(key) for e in per_prompt.values()]
            if values and None not in values:
                summary[name] = statistics.mean(values)
        summary.update(_summed_rates(per_prompt))
        summary["new_tokens_mean"] = statistics.mean(
            statistics.mean(r["new_tokens"] for r in e["runs"]) for e in per_prompt.values()
        )
        summary["deterministic"] = all(e.get("deterministic", True) for e in per_prompt.values())

        # speculative statistics, summed over every timed run of every prompt
        totals: dict[str, float] = {}
        for entry in per_prompt.values():
            for run in entry["runs"]:
                for key, value in (run.get("stats") or {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        totals[key] = totals.get(key, 0) + value
        if totals.get("target_calls"):
            summary["target_calls"] = totals["target_calls"]
            summary["mean_accepted_per_call"] = totals.get("draft_tokens_accepted", 0) / totals["target_calls"]
            summary["tokens_per_target_call"] = totals.get("new_tokens", 0) / totals["target_calls"]
            if "fill_tokens_accepted" in totals:  # ours: free guesses verified in the padding of target calls
                summary["fill_accepted_per_call"] = totals["fill_tokens_accepted"] / totals["target_calls"]
        if totals.get("draft_tokens_proposed"):
            summary["acceptance_rate"] = totals.get("draft_tokens_accepted", 0) / totals["draft_tokens_proposed"]
            if totals.get("draft_calls"):  # ours with a draft model: below 1 where n-gram guesses saved calls
                summary["draft_calls_per_token"] = totals["draft_calls"] / totals["draft_tokens_proposed"]
        if totals.get("seconds_total"):  # ours: SpeculationStats
            summary["python_fraction"] = totals.get("seconds_python", 0.0) / totals["seconds_total"]
            summary["target_fraction"] = totals.get("seconds_target", 0.0) / totals["seconds_total"]
            summary["draft_fraction"] = totals.get("seconds_draft", 0.0) / totals["seconds_total"]
            if totals.get("seconds_wall"):
                # everything outside the OpenVINO calls, over the whole generate (input checks, output tensors too)
                summary["python_fraction_of_wall"] = 1.0 - (
                    totals.get("seconds_target", 0.0) + totals.get("seconds_draft", 0.0)
                ) / totals["seconds_wall"]
        per_prompt_acceptance = {}
        for name, entry in per_prompt.items():
            accepted = sum((r.get("stats") or {}).get("draft_tokens_accepted", 0) for r in entry["runs"])
            proposed = sum((r.get("stats") or {}).get("draft_tokens_proposed", 0) for r in entry["runs"])
            if proposed:
                per_prompt_acceptance[name] = accepted / proposed
        if per_prompt_acceptance:
            summary["acceptance_per_prompt"] = per_prompt_acceptance

        # agreement with plain greedy of the same target
        if reference:
            agreement = {n: _agreement(reference[n], e["tokens"]) for n, e in per_prompt.items() if n in reference}
            summary["agreement_per_prompt"] = agreement
            summary["agreement"] = statistics.mean(a["fraction"] for a in agreement.values())
            summary["exact_match_rate"] = statistics.mean(float(a["exact"]) for a in agreement.values())
        if genai_reference and m["family"] == "genai":
            agreement = {n: _agreement(genai_reference[n], e["tokens"]) for n, e in per_prompt.items() if n in genai_reference}
            summary["agreement_vs_genai_plain"] = statistics.mean(a["fraction"] for a in agreement.values())
            summary["exact_match_rate_vs_genai_plain"] = statistics.mean(float(a["exact"]) for a in agreement.values())

        base_medians = _anchor_medians(results, m, "baseline", baseline)
        if base_medians:
            summary["ratio_per_prompt"] = {n: v / base_medians[n] for n, v in medians.items() if n in base_medians}

    # ratios against the baselines of the same run
    best_peer: dict[str, tuple[str, float]] = {}
    for m in methods:
        if not _ok(m) or m["type"] not in ("genai-spec", "genai-lookup"):
            continue
        key = f"spec:{m['draft']}" if m["type"] == "genai-spec" else "lookup"
        tps = m["summary"]["tokens_per_second"]
        if key not in best_peer or tps > best_peer[key][1]:
            best_peer[key] = (m["id"], tps)
    results["best_genai"] = {k: {"id": v[0], "tokens_per_second": v[1]} for k, v in best_peer.items()}
    for m in methods:
        s = m["summary"]
        if "tokens_per_second" not in s:
            continue
        # a row measured in a memory group is compared with the anchors measured in the same group
        for anchor, row, key in (("baseline", baseline, "ratio_vs_baseline"), ("genai", genai, "ratio_vs_genai")):
            anchor_medians = _anchor_medians(results, m, anchor, row)
            if anchor_medians:
                s[key] = s["tokens_per_second"] / statistics.mean(anchor_medians.values())
        peer_key = {"ours": f"spec:{m.get('draft')}", "ours-lookup": "lookup"}.get(m["type"])
        if peer_key in best_peer:
            s["ratio_vs_genai_best_same_draft"] = s["tokens_per_second"] / best_peer[peer_key][1]
            s["genai_best_same_draft"] = best_peer[peer_key][0]


# ----------------------------------------------------------------------------------------- markdown


def _f(value: Optional[float], fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown_table(results: dict) -> str:
    lines = [
        "| method | draft | policy | tokens/s | decode tokens/s | TTFT ms | × optimum-intel | × GenAI plain "
        "| × GenAI best (same draft) | accepted / target call | padding guesses kept / call | acceptance "
        "| draft calls / draft token | python time | agreement (prefix) | exact prompts | status |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in results["methods"]:
        s = m.get("summary", {})
        status = m["status"] if m["status"] == "ok" else f"**{m['status']}**: `{m.get('error', '')[:160]}`"
        if m["status"] == "ok" and not s.get("deterministic", True):
            status += " (runs differ)"
        lines.append(
            f"| {m['id']} | {m.get('draft') or '-'} | {m['policy']} | {_f(s.get('tokens_per_second'), '{:.1f}')} "
            f"| {_f(s.get('decode_tokens_per_second'), '{:.1f}')} "
            f"| {_f(None if s.get('first_tokens_seconds') is None else 1e3 * s['first_tokens_seconds'], '{:.0f}')} "
            f"| {_f(s.get('ratio_vs_baseline'))} | {_f(s.get('ratio_vs_genai'))} "
            f"| {_f(s.get('ratio_vs_genai_best_same_draft'))} | {_f(s.get('mean_accepted_per_call'))} "
            f"| {_f(s.get('fill_accepted_per_call'))} | {_pct(s.get('acceptance_rate'))} | {_f(s.get('draft_calls_per_token'))} "
            f"| {_f(s.get('python_fraction'), '{:.1%}')} | {_pct(s.get('agreement'))} "
            f"| {_f(s.get('exact_match_rate'), '{:.0%}') if s.get('exact_match_rate') is not None else '-'} | {status} |"
        )
    return "\n".join(lines)


def _per_prompt_table(results: dict, value, fmt: str) -> str:
    names = [p["name"] for p in results.get("prompts", [])]
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in results["methods"]:
        if not _ok(m):
            continue
        cells = []
        for name in names:
            v = value(m, name)
            cells.append("-" if v is None else fmt.format(v))
        lines.append(f"| {m['id']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _groups_lines(results: dict) -> list[str]:
    groups = results.get("groups", [])
    if len(groups) < 2:
        return []
    lines = ["- memory groups (each interleaved on its own, with its models alone in memory; the baseline and GenAI "
             "plain rows run in every group and each row's ratios use the anchors of its own group; the anchor rows "
             "below pool all groups' runs):"]
    for group in groups:
        anchors = ", ".join(f"{a} {statistics.mean(v.values()):.1f} tok/s" for a, v in group["anchors"].items() if v)
        lines.append(f"  - {group['name']}: {len(group['methods'])} methods; {anchors}")
    return lines


def _priced_lines(results: dict) -> list[str]:
    from .pricing import priced_rows

    priced = priced_rows(results)
    if priced is None:
        return []
    lat = priced["latencies"]
    verify = ", ".join(f"{1000 * v:.0f}" for v in lat["verify_seconds"][:6])
    measured = {m["id"]: m["summary"].get("tokens_per_second") for m in results["methods"] if m["status"] == "ok"}
    lines = ["## Lookahead policies priced at one latency table (free of timing noise)", "",
             f"Each row's own decode steps (draft tokens proposed, verified at the widths the row ran at) priced with "
             f"the latencies calibration measured for `{priced['latencies_of']}` (draft step "
             f"{1000 * lat['draft_step_seconds']:.1f} ms; target call over n = 1..6 tokens {verify} ms). A row's greedy "
             "steps are the same from run to run while its wall time is not, so this ranks the policies by their "
             "choices alone (`benchmarks/pricing.py`).", "",
             "| method | verification widths | priced tokens/s | x best static k (priced) | measured tokens/s |",
             "|---|---|---:|---:|---:|"]
    for method_id, row in priced["rows"].items():
        best = " (best static)" if method_id == priced["best_static"] else ""
        lines.append(f"| {method_id}{best} | {', '.join(map(str, row['widths']))} | {row['tokens_per_second']:.1f} | "
                     f"{row['x_best_static']:.3f} | {_f(measured.get(method_id), '{:.1f}')} |")
    return lines + [""]


def _best(rows: list[dict], key: str) -> Optional[dict]:
    rows = [m for m in rows if m["summary"].get(key)]
    return max(rows, key=lambda m: m["summary"][key]) if rows else None


def dynamic_lookahead_rows(results: dict) -> list[dict]:
    """Each dynamic-lookahead row of ours ("disco", "cost") against the best static k of the same draft (chosen
    after the fact on these prompts), GenAI's best speculative row of that draft and our target alone, end to end
    and after the first tokens (decode)."""
    methods = [m for m in results["methods"] if _ok(m) and m.get("summary")]
    alone = next((m for m in methods if m["type"] == "ours-target-only"), None)
    rows = []
    for m in methods:
        if m["type"] not in ("ours", "ours-lookup") or m.get("schedule") not in ("disco", "cost"):
            continue
        same_draft = [o for o in methods if o["type"] == m["type"] and o.get("draft") == m.get("draft")]
        static = [o for o in same_draft if o.get("schedule") == "constant" and o.get("confidence") is None and o.get("k")]
        genai_type = "genai-spec" if m["type"] == "ours" else "genai-lookup"
        genai = [o for o in methods if o["type"] == genai_type and (m["type"] == "ours-lookup" or o.get("draft") == m.get("draft"))]
        row = {"id": m["id"]}
        for key in ("tokens_per_second", "decode_tokens_per_second", "summed_tokens_per_second",
                    "summed_decode_tokens_per_second"):
            value = m["summary"].get(key)
            if value is None:
                continue
            row[key] = value
            for name, peers in (("best_static", static), ("genai_best", genai), ("target_alone", [alone] if alone else [])):
                peer = _best(peers, key)
                if peer is not None:
                    row[f"{key}:{name}"] = (peer["id"], value / peer["summary"][key])
        rows.append(row)
    return rows


def _dynamic_lines(results: dict) -> list[str]:
    rows = dynamic_lookahead_rows(results)
    if not rows:
        return []

    def ratio(row: dict, key: str) -> str:
        peer = row.get(key)
        return "-" if peer is None else f"{peer[1]:.2f} ({_short(peer[0])})"

    lines = ["## Dynamic lookahead against the best static k, GenAI and the target alone", "",
             "The best static k and GenAI's best configuration of the same draft are chosen after the fact on these "
             "prompts; \"decode\" leaves out each generation's first tokens (the prompt's prefill, the same for every "
             "row).", "",
             "| method | tokens/s | x best static k | x GenAI best | x our target alone | decode tokens/s "
             "| decode x best static k | decode x GenAI best | decode x target alone |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['id']} | {_f(row.get('tokens_per_second'), '{:.1f}')} "
            f"| {ratio(row, 'tokens_per_second:best_static')} | {ratio(row, 'tokens_per_second:genai_best')} "
            f"| {ratio(row, 'tokens_per_second:target_alone')} | {_f(row.get('decode_tokens_per_second'), '{:.1f}')} "
            f"| {ratio(row, 'decode_tokens_per_second:best_static')} | {ratio(row, 'decode_tokens_per_second:genai_best')} "
            f"| {ratio(row, 'decode_tokens_per_second:target_alone')} |")
    if any("summed_tokens_per_second" in row for row in rows):
        lines += ["", "The same, summed over the prompts (all new tokens over all seconds of each prompt's median run: "
                  "the workload's rate, where the table above weighs each prompt's rate alike; the best static k "
                  "and GenAI's best are chosen by this rate):", "",
                  "| method | tokens/s | x best static k | x GenAI best | decode tokens/s | decode x best static k "
                  "| decode x GenAI best |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            lines.append(
                f"| {row['id']} | {_f(row.get('summed_tokens_per_second'), '{:.1f}')} "
                f"| {ratio(row, 'summed_tokens_per_second:best_static')} "
                f"| {ratio(row, 'summed_tokens_per_second:genai_best')} "
                f"| {_f(row.get('summed_decode_tokens_per_second'), '{:.1f}')} "
                f"| {ratio(row, 'summed_decode_tokens_per_second:best_static')} "
                f"| {ratio(row, 'summed_decode_tokens_per_second:genai_best')} |")
    return lines + [""]


def _dq_note(results: dict, key: str) -> str:
    """" (its IR: DYNAMIC_QUANTIZATION_GROUP_SIZE=N)" when a model's IR overrides the plugin's group size."""
    size = results.get("models", {}).get("dq_group_sizes", {}).get(key)
    return "" if size is None else f" (its IR: DYNAMIC_QUANTIZATION_GROUP_SIZE={size})"


def write_markdown(results: dict, path: Path) -> None:
    hw = results["hardware"]
    protocol = results["protocol"]
    props = hw.get("openvino_cpu_properties", {})
    prompt_list = ", ".join(f"{p['name']} ({p['prompt_tokens']} tokens)" for p in results.get("prompts", []))
    dirs = results.get("models", {}).get("directories", {})
    parts = [
        f"# Benchmark: {results['preset']}",
        "",
        f"- command: `{hw.get('command')}` (started {results.get('started')}, {results.get('benchmark_seconds', '?')} s)",
        f"- hardware: {hardware.summary_line(hw)}; load average at start {hw.get('load_average_at_start')}, "
        f"at end {hw.get('load_average_at_end')}",
        f"- CPU plugin defaults: INFERENCE_PRECISION_HINT={props.get('INFERENCE_PRECISION_HINT')}, "
        f"KV_CACHE_PRECISION={props.get('KV_CACHE_PRECISION')}, "
        f"DYNAMIC_QUANTIZATION_GROUP_SIZE={props.get('DYNAMIC_QUANTIZATION_GROUP_SIZE')}; ov_config for every method: "
        f"`{protocol['ov_config']}`",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in hw.get("packages", {}).items() if v),
        f"- git: {hw.get('git')}",
        "- models: " + "; ".join(f"{k}: `{v}`" + _dq_note(results, k) for k, v in dirs.items()),
        f"- protocol: greedy, {protocol['max_new_tokens']} new tokens, {protocol['warmup']} warm-up call(s) per method, "
        f"median of {protocol['runs']} run(s) per prompt; order {protocol.get('order', 'sequential').split(':')[0]}; tokens/s = mean over prompts of the per-prompt medians; "
        f"ratios against the baselines of this run. Agreement = tokens identical to the optimum-intel baseline's greedy "
        f"output until the first mismatch / length (mean over prompts); exact = share of prompts identical.",
        f"- prompts (chat template applied): {prompt_list}",
        *_groups_lines(results),
        "",
        "## Results",
        "",
        markdown_table(results),
        "",
    ]
    best = results.get("best_genai", {})
    if best:
        parts += ["GenAI best per draft: " + ", ".join(f"{k} → {v['id']} ({v['tokens_per_second']:.1f} tokens/s)"
                                                      for k, v in best.items()), ""]
    genai_rows = [m for m in results["methods"] if m["family"] == "genai" and "agreement_vs_genai_plain" in m.get("summary", {})]
    if genai_rows:
        parts += ["GenAI agreement with GenAI's own plain greedy: " + ", ".join(
            f"{m['id']} {_pct(m['summary']['agreement_vs_genai_plain'])} "
            f"(exact {m['summary']['exact_match_rate_vs_genai_plain']:.0%})" for m in genai_rows), ""]
    calibrations = results.get("calibrations") or {}
    if calibrations:
        parts += ["## Calibration of the dynamic lookahead (package calibration prompts, held out from the above)", "",
                  "| pair | calibration s | examples | held-out AUC | threshold (stop rule) | verification widths "
                  "| sim. tok/s DISCO / best static (k) / oracle "
                  "| draft step ms | verify(1) / verify(k+1) ms | decision cost (share of a draft step) |",
                  "|---|---:|---:|---:|---:|---|---|---:|---|---:|"]
        for key, c in calibrations.items():
            quality, sim, lat = c.get("classifier_quality", {}), c.get("simulated_tokens_per_second", {}), c.get("latencies", {})
            verify = lat.get("verify_seconds") or [0]
            decision = c.get("decision_seconds")
            share = decision / lat["draft_step_seconds"] if decision and lat.get("draft_step_seconds") else None
            parts.append(
                f"| {key} | {c.get('seconds')} | {quality.get('examples')} | {_f(quality.get('held_out_auc'))} | "
                f"{c.get('threshold')} ({c.get('stop_rule', 'token')}) | {', '.join(map(str, c.get('verification_widths') or [])) or '-'} | "
                f"{_f(sim.get('disco'), '{:.1f}')} / {_f(sim.get('best_static'), '{:.1f}')} "
                f"({sim.get('best_static_k')}) / {_f(sim.get('oracle'), '{:.1f}')} | "
                f"{1000 * lat.get('draft_step_seconds', 0):.1f} | {1000 * verify[0]:.1f} / {1000 * verify[-1]:.1f} | "
                f"{'-' if decision is None else f'{1e6 * decision:.0f} us ({share:.1%})'} |"
            )
        parts.append("")
    parts += _dynamic_lines(results)
    parts += _priced_lines(results)
    parts += [
        "## Tokens/s per prompt (median of runs)",
        "",
        _per_prompt_table(results, lambda m, n: m["per_prompt"].get(n, {}).get("median_tokens_per_second"), "{:.1f}"),
        "",
        "## Speed ratio vs optimum-intel baseline per prompt",
        "",
        _per_prompt_table(results, lambda m, n: m["summary"].get("ratio_per_prompt", {}).get(n), "{:.2f}"),
        "",
        "## Draft acceptance per prompt",
        "",
        _per_prompt_table(results, lambda m, n: m["summary"].get("acceptance_per_prompt", {}).get(n), "{:.0%}"),
        "",
        "## Agreement with plain greedy per prompt (prefix fraction; * = identical)",
        "",
        _per_prompt_table(
            results,
            lambda m, n: (lambda a: None if a is None else f"{a['fraction']:.0%}{'*' if a['exact'] else ''}")(
                m["summary"].get("agreement_per_prompt", {}).get(n)),
            "{}",
        ),
        "",
        "## New tokens per prompt",
        "",
        _per_prompt_table(results, lambda m, n: (lambda e: e and e["runs"][0]["new_tokens"])(m["per_prompt"].get(n)), "{}"),
        "",
    ]
    failed = [m for m in results["methods"] if m["status"] != "ok"]
    if failed:
        parts += ["## Failures", ""] + [f"- `{m['id']}` ({m['status']}): `{m.get('error')}`" for m in failed] + [""]
    plots = sorted(p.name for p in path.parent.glob("*.png"))
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    path.write_text("\n".join(parts))


# --------------------------------------------------------------------------------------------- plots


def plot_all(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for plot in (plot_tokens_per_second, plot_acceptance, plot_lookahead, plot_time_split, plot_ratio_per_prompt):
        path = plot(results, out)
        if path is not None:
            written.append(path)
    write_markdown(results, out / "results.md")  # refresh the plot list
    return written


def _short(method_id: str) -> str:
    return method_id.replace("genai-", "G-").replace("ours-lookup", "ours-PLD").replace("genai", "GenAI")


def plot_tokens_per_second(results: dict, out: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    rows = results["methods"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    labels, values, colors = [], [], []
    for m in rows:
        labels.append(m["id"] + (f"  [{m['status']}]" if m["status"] != "ok" else ""))
        values.append(m.get("summary", {}).get("tokens_per_second", 0.0))
        colors.append(FAMILY_COLORS.get(m["family"], "#999999"))
    y = range(len(rows))
    ax.barh(y, values, color=colors)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    for yi, v in zip(y, values):
        if v:
            ax.text(v, yi, f" {v:.1f}", va="center", fontsize=7)
    base = next((m for m in rows if m["type"] == "baseline" and _ok(m)), None)
    genai = next((m for m in rows if m["type"] == "genai" and _ok(m)), None)
    if base:
        ax.axvline(base["summary"]["tokens_per_second"], color="black", ls="--", lw=1, label="optimum-intel baseline")
    if genai:
        ax.axvline(genai["summary"]["tokens_per_second"], color="#ff7f0e", ls=":", lw=1.5, label="GenAI plain")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=f) for f, c in FAMILY_COLORS.items() if any(m["family"] == f for m in rows)]
    handles += ax.get_legend_handles_labels()[0]
    ax.set_xlim(0, 1.12 * max(values + [1.0]))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel("tokens/s (mean over prompts of the median run)")
    ax.set_title(f"{results['preset']}: generation speed, greedy, {results['protocol']['max_new_tokens']} new tokens",
                 fontsize=10)
    fig.tight_layout()
    path = out / "tokens_per_second.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _step_lists(m: dict) -> tuple[list[int], list[int]]:
    proposed, accepted = [], []
    for entry in m["per_prompt"].values():
        stats = entry["runs"][-1].get("stats") or {}
        proposed += stats.get("proposed_per_step", [])
        accepted += stats.get("accepted_per_step", [])
    return proposed, accepted


def plot_acceptance(results: dict, out: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt
    import numpy as np

    ours = [m for m in results["methods"] if _ok(m) and _step_lists(m)[1]]
    spec = [m for m in results["methods"] if _ok(m) and m["summary"].get("acceptance_per_prompt")]
    if not ours and not spec:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * max(len(ours), len(spec)) + 2.2),
                             gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    if ours:
        top = max(max(_step_lists(m)[1]) for m in ours)
        cmap = plt.get_cmap("viridis", top + 1)
        for row, m in enumerate(ours):
            accepted = np.array(_step_lists(m)[1])
            counts = np.bincount(accepted, minlength=top + 1) / len(accepted)
            left = 0.0
            for value, share in enumerate(counts):
                if share:
                    ax.barh(row, share, left=left, color=cmap(value), edgecolor="white", lw=0.3)
                    if share > 0.06:
                        ax.text(left + share / 2, row, str(value), ha="center", va="center", fontsize=6,
                                color="white" if value < top * 0.6 else "black")
                left += share
        ax.set_yticks(range(len(ours)), [f"{_short(m['id'])} (mean {m['summary'].get('mean_accepted_per_call', 0):.2f})"
                                         for m in ours], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of target calls (label: draft tokens accepted in the call)")
        ax.set_title("ours: accepted draft tokens per target call (last run of each prompt)", fontsize=9)
    else:
        ax.axis("off")
    ax = axes[1]
    if spec:
        names = [p["name"] for p in results["prompts"]]
        grid = np.array([[m["summary"]["acceptance_per_prompt"].get(n, np.nan) for n in names] for m in spec])
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(spec)), [_short(m["id"]) for m in spec], fontsize=7)
        ax.set_title("acceptance rate (accepted / proposed) per prompt", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
    else:
        ax.axis("off")
    return _save(fig, out / "acceptance.png")


def plot_lookahead(results: dict, out: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    dynamic = [m for m in results["methods"] if _ok(m) and m["family"] == "ours"
               and (m.get("schedule") in ("heuristic", "disco", "cost") or m.get("confidence") is not None)
               and _step_lists(m)[0]]
    if not dynamic:
        return None
    fig, axes = plt.subplots(len(dynamic), 1, figsize=(10, 2.3 * len(dynamic) + 0.6), squeeze=False, sharex=True)
    for ax, m in zip(axes[:, 0], dynamic):
        for index, (name, entry) in enumerate(m["per_prompt"].items()):
            stats = entry["runs"][-1].get("stats") or {}
            proposed, accepted = stats.get("proposed_per_step", []), stats.get("accepted_per_step", [])
            color = plt.get_cmap("tab10")(index)
            ax.step(range(len(proposed)), proposed, where="mid", color=color, lw=1.2, label=f"{name}")
            ax.plot(range(len(accepted)), accepted, ".", color=color, ms=3, alpha=0.6)
        ax.set_ylabel("k", fontsize=8)
        ax.set_title(f"{m['id']}: drafted tokens per step (line) and accepted (dots)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=5, loc="upper right")
    axes[-1, 0].set_xlabel("speculative step (target call)")
    return _save(fig, out / "lookahead.png")


def plot_time_split(results: dict, out: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    rows = [m for m in results["methods"] if _ok(m) and "python_fraction" in m["summary"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    parts = (("target_fraction", "target (OpenVINO)", "#1f77b4"), ("draft_fraction", "draft (OpenVINO)", "#aec7e8"),
             ("python_fraction", "Python loop", "#d62728"))
    for row, m in enumerate(rows):
        left = 0.0
        for key, label, color in parts:
            share = m["summary"].get(key, 0.0)
            ax.barh(row, share, left=left, color=color, label=label if row == 0 else None)
            if key == "python_fraction":
                ax.text(left + share, row, f" {share:.1%}", va="center", fontsize=7)
            left += share
    ax.set_yticks(range(len(rows)), [m["id"] for m in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("share of the speculative loop's time (SpeculationStats: seconds_python / seconds_total)")
    ax.set_title("where ours spends its time", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path = out / "python_time.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_ratio_per_prompt(results: dict, out: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    rows = [m for m in results["methods"] if _ok(m) and m["summary"].get("ratio_per_prompt")]
    if len(rows) < 2:
        return None
    names = [p["name"] for p in results["prompts"]]
    grid = np.array([[m["summary"]["ratio_per_prompt"].get(n, np.nan) for n in names] for m in rows])
    fig, ax = plt.subplots(figsize=(2 + 1.3 * len(names), 0.32 * len(rows) + 1.6))
    high = max(1.05, float(np.nanmax(grid)))
    low = min(0.95, float(np.nanmin(grid)))
    image = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(vcenter=1.0, vmin=low, vmax=high), aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [m["id"] for m in rows], fontsize=8)
    ax.set_title("speed vs optimum-intel baseline, per prompt (median runs)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _save(fig, out / "ratio_per_prompt.png")


def _save(fig, path: Path) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> None:
    """Rebuild results.md and the plots of a finished run from its results.json."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m benchmarks.report RESULTS_DIR")
    out = Path(argv[0])
    results = json.loads((out / "results.json").read_text())
    summarize(results)
    write_markdown(results, out / "results.md")
    plot_all(results, out)
    print(markdown_table(results))


if __name__ == "__main__":
    main()


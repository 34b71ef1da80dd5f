"""How much any lookahead policy can gain over static k on this machine, and how much DISCO takes of it.

    python -m benchmarks.headroom --preset qwen --draft pair

Under greedy decoding a draft token is accepted exactly when it equals the target's own next token and every
draft token before it in the step was accepted. So one greedy generation per prompt (the target's tokens) and
one draft prefill over it (the draft's greedy token and signal at every position, given the target's prefix)
hold everything the speculative loop would see, without running it for every candidate policy. Steps are
replayed the way ``optimum-cli dynexec calibrate`` records them (the draft proposes ``--max-lookahead`` tokens,
the target accepts the run of agreements); the DISCO classifier is trained and its threshold tuned on the
package's calibration prompts exactly as calibration does, and the benchmark prompts stay held out. On the
held-out steps, under latencies measured here (one draft step; target calls over 1..k+1 tokens), it simulates
the target alone, every static k, DISCO, and the oracle (drafting exactly the tokens the target will accept).

The oracle bounds every lookahead policy that only chooses how many draft tokens to verify; the gap between
the best static k and the oracle is the headroom, and DISCO's share of it is what the classifier can predict.

Writes ``headroom.json``, ``headroom.md`` and ``headroom.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .run import load_config, load_prompts, preset_path

logger = logging.getLogger(__name__)


def oracle_record(model, prompt_ids: np.ndarray, max_new_tokens: int) -> dict:
    """The target's greedy tokens after ``prompt_ids`` and, at each of them, the draft's greedy token and signal."""
    import torch

    from optimum_dynexec.speculative.signals import greedy_signal

    output = model.generate(torch.from_numpy(prompt_ids[None]), max_new_tokens=max_new_tokens, do_sample=False,
                            num_assistant_tokens=2)
    generated = output[0, len(prompt_ids):].numpy().astype(np.int64)
    sequence = np.concatenate([prompt_ids, generated])
    draft, vocabulary = model._draft_runner(model.draft_model)
    draft.reset()
    rows = draft.forward(sequence[:-1], last=len(generated))
    draft.reset()
    columns = rows.argmax(axis=-1)
    tokens = columns if vocabulary is None else np.asarray(vocabulary)[columns]
    return {"target": generated, "draft": tokens,
            "signals": [greedy_signal(row, int(column)) for row, column in zip(rows, columns)]}


def replay_steps(record: dict, max_lookahead: int) -> list:
    """The steps calibration would record: ``max_lookahead`` draft tokens each (fewer at the end), accepted up
    to the first disagreement, with the DISCO features of each token."""
    from optimum_dynexec.speculative.calibration import RecordedStep
    from optimum_dynexec.speculative.disco import FeatureTracker

    agree = record["target"] == record["draft"]
    tracker = FeatureTracker()
    steps, position, total = [], 0, len(agree)
    while position < total - 1:
        proposed = min(max_lookahead, total - 1 - position)
        tracker.start_step()
        features = [tracker.features(j, record["signals"][position + j]) for j in range(proposed)]
        accepted = 0
        while accepted < proposed and agree[position + accepted]:
            accepted += 1
        steps.append(RecordedStep(np.asarray(features, dtype=np.float64), accepted))
        tracker.observe(proposed, accepted)
        position += accepted + 1
    return steps


def simulate_policies(train: list, held_out: list, latencies, max_lookahead: int, max_widths: int) -> dict:
    """Tokens/s on the held-out steps of the target alone, every static k, DISCO (trained and tuned on
    ``train``), DISCO fit and tuned on the held-out steps themselves (what its features can tell at best), DISCO
    verifying at every width rather than padding to ``max_widths`` compiled ones, and the oracle."""
    from optimum_dynexec.speculative.calibration import (THRESHOLDS, disco_lookahead, simulate, train_classifier,
                                                         tune_lookahead)
    from optimum_dynexec.speculative.disco import STOP_RULES

    classifier, quality = train_classifier(train)
    threshold, stop_rule, widths, tuning = tune_lookahead(train, classifier, latencies, max_widths=max_widths)
    cap = max(widths) - 1
    rates = {"target alone": simulate(held_out, lambda step: 0, latencies)["tokens_per_second"]}
    for k in range(1, max_lookahead + 1):
        rates[f"static k={k}"] = simulate(held_out, lambda step, k=k: k, latencies)["tokens_per_second"]
    disco = simulate(held_out, lambda step: min(disco_lookahead(step, classifier, threshold, stop_rule), cap),
                     latencies.with_widths(widths))
    rates["disco"] = disco["tokens_per_second"]
    # where the rest of the headroom goes: the classifier (fit and tuned on the very steps it is scored on, the
    # most these features can tell), and the padding of calls to a few compiled widths (every width its own)
    fitted, _ = train_classifier(held_out)
    fitted_tuning = tune_lookahead(held_out, fitted, latencies, max_widths=max_widths)
    rates["disco, fit on these prompts"] = simulate(
        held_out,
        lambda step: min(disco_lookahead(step, fitted, fitted_tuning.threshold, fitted_tuning.stop_rule),
                         max(fitted_tuning.widths) - 1),
        latencies.with_widths(fitted_tuning.widths))["tokens_per_second"]
    rule, level = max(((r, t) for r in STOP_RULES for t in THRESHOLDS), key=lambda choice: simulate(
        train, lambda step: disco_lookahead(step, classifier, choice[1], choice[0]), latencies)["tokens_per_second"])
    rates["disco, every width compiled"] = simulate(
        held_out, lambda step: disco_lookahead(step, classifier, level, rule), latencies)["tokens_per_second"]
    rates["oracle"] = simulate(held_out, lambda step: step.accepted, latencies)["tokens_per_second"]
    best_static = max((name for name in rates if name.startswith("static")), key=rates.get)
    return {"tokens_per_second": rates, "best_static": best_static, "threshold": threshold, "stop_rule": stop_rule,
            "verification_widths": list(widths), "classifier_quality": quality,
            "train_simulation": {"disco": tuning["threshold_curve"][threshold],
                                 "best_static": max(tuning["static"].values())},
            "oracle_lookahead": [step.accepted for step in held_out], "disco_lookahead": disco["chosen"]}


def _describe(entry: dict) -> str:
    """A preset model entry as one name: ``qwen2.5-coder-1.5b (int8)`` or its path."""
    return f"{entry['offline']} ({entry.get('format', 'default')})" if "offline" in entry else str(entry["path"])


def write_report(result: dict, out: Path) -> None:
    rates = result["simulation"]["tokens_per_second"]
    best = rates[result["simulation"]["best_static"]]
    lines = [f"# Lookahead headroom: {result['pair']}", "",
             f"Held-out prompts: {', '.join(result['held_out_prompts'])}; trained and tuned on "
             f"{result['train_prompts']} calibration prompts; {result['max_new_tokens']} new tokens each. "
             f"Latencies measured here: draft step {1e3 * result['latencies']['draft_step_seconds']:.1f} ms, "
             f"target call over n tokens {', '.join(f'{1e3 * v:.0f}' for v in result['latencies']['verify_seconds'][:6])} ms "
             "(n = 1..6).", "",
             "| policy (simulated on the held-out steps) | tokens/s | x target alone | x best static k |",
             "|---|---:|---:|---:|"]
    for name, value in rates.items():
        lines.append(f"| {name} | {value:.2f} | {value / rates['target alone']:.2f} | {value / best:.3f} |")
    quality = result["simulation"]["classifier_quality"]
    lines += ["", f"Best static: {result['simulation']['best_static']}. DISCO ({result['simulation']['stop_rule']} rule) threshold "
              f"{result['simulation']['threshold']:.2f}, verification widths {result['simulation']['verification_widths']}; "
              f"classifier held-out AUC {quality.get('held_out_auc') or float('nan'):.3f} on {quality['examples']} "
              "calibration tokens.",
              f"Headroom (oracle / best static): {rates['oracle'] / best:.2f}x; DISCO takes "
              f"{(rates['disco'] - best) / max(rates['oracle'] - best, 1e-9):.0%} of it. Fit and tuned on the held-out "
              f"steps themselves (the most its features tell) it reaches {rates['disco, fit on these prompts'] / best:.3f}x "
              f"the best static k; verifying every lookahead at its own width (no padding to "
              f"{len(result['simulation']['verification_widths'])} compiled widths) "
              f"{rates['disco, every width compiled'] / best:.3f}x.", "",
              f"Command: `{result['command']}`"]
    (out / "headroom.md").write_text("\n".join(lines) + "\n")


def plot(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simulation = result["simulation"]
    rates = simulation["tokens_per_second"]
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    names = list(rates)
    colors = ["tab:green" if n == "oracle" else "tab:orange" if n.startswith("disco") else "tab:gray" if n == "target alone"
              else "tab:blue" for n in names]
    axes[0].bar(range(len(names)), [rates[n] for n in names], color=colors)
    axes[0].set_xticks(range(len(names)), [n.replace("static ", "") for n in names], rotation=45, ha="right")
    axes[0].set(ylabel="simulated tokens/s (held-out prompts)", title="Static k, DISCO and the oracle")
    shown = min(120, len(simulation["oracle_lookahead"]))
    axes[1].step(range(shown), simulation["oracle_lookahead"][:shown], where="mid", label="oracle (tokens accepted)")
    axes[1].step(range(shown), simulation["disco_lookahead"][:shown], where="mid", alpha=0.8, label="DISCO lookahead")
    axes[1].set(xlabel="speculative step (held-out)", ylabel="draft tokens", title="Oracle vs DISCO per step")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    path = out / "headroom.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="configs/bench-<preset>.yaml (its target, drafts and held-out prompts)")
    source.add_argument("--config", help="a benchmark YAML file")
    parser.add_argument("--draft", default="pair", help="which of the preset's drafts (a draft model, not int4-self)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the preset's")
    parser.add_argument("--max-lookahead", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from optimum_dynexec import OVSpeculativeModelForCausalLM
    from optimum_dynexec.calibration import _encode, default_calibration_prompts
    from optimum_dynexec.speculative.cost import measure_latencies

    from .methods import resolve_model_dir

    config = load_config(Path(args.config) if args.config else preset_path(args.preset))
    drafts = config.get("drafts", {})
    if args.draft not in drafts or not ({"offline", "path"} & set(drafts[args.draft])):
        raise SystemExit(f"--draft {args.draft!r}: the preset's drafts with a model directory are "
                         f"{[name for name, d in drafts.items() if 'offline' in d or 'path' in d]}")
    max_new_tokens = args.max_new_tokens or int(config["max_new_tokens"])
    out = args.out or Path(__file__).parent / "results" / f"{config['name']}-headroom"
    out.mkdir(parents=True, exist_ok=True)

    ov_config = dict(config.get("ov_config") or {})
    target_dir = resolve_model_dir(config["target"])
    model = OVSpeculativeModelForCausalLM.from_pretrained(target_dir, ov_config=ov_config,
                                                          draft_model=str(resolve_model_dir(drafts[args.draft])))
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    train_prompts = default_calibration_prompts()
    held_out = load_prompts(config)
    start = time.perf_counter()
    records = {}
    for name, text in tqdm([(f"calibration-{i}", p) for i, p in enumerate(train_prompts)]
                           + [(p["name"], p["text"]) for p in held_out], desc="target tokens + draft prefill"):
        records[name] = oracle_record(model, _encode(tokenizer, text), max_new_tokens)
    train_steps = [s for name, r in records.items() if name.startswith("calibration-")
                   for s in replay_steps(r, args.max_lookahead)]
    held_out_steps = [s for p in held_out for s in replay_steps(records[p["name"]], args.max_lookahead)]
    target = model._runner(model)
    draft_runner, _ = model._draft_runner(model.draft_model)
    context = _encode(tokenizer, held_out[0]["text"])
    latencies = measure_latencies(target, draft_runner, context, args.max_lookahead, repeats=3, rounds=3,
                                  context_tokens=256)
    max_widths = 1 + model._target_copies()
    simulation = simulate_policies(train_steps, held_out_steps, latencies, args.max_lookahead, max_widths)
    result = {
        "pair": f"{_describe(config['target'])} + {_describe(drafts[args.draft])}", "max_new_tokens": max_new_tokens,
        "train_prompts": len(train_prompts), "held_out_prompts": [p["name"] for p in held_out],
        "draft_agreement_held_out": float(np.mean(np.concatenate(
            [records[p["name"]]["target"] == records[p["name"]]["draft"] for p in held_out]))),
        "latencies": latencies.to_dict(), "simulation": simulation, "seconds": round(time.perf_counter() - start, 1),
        "command": "python -m benchmarks.headroom " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out / "headroom.json").write_text(json.dumps(result, indent=1, default=float))
    write_report(result, out)
    plot(result, out)
    print((out / "headroom.md").read_text())


if __name__ == "__main__":
    main()

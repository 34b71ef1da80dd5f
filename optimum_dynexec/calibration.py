"""Calibrate a saved pair's dynamic lookahead: ``optimum-cli dynexec calibrate PAIR_DIR``.

Runs the pair on calibration prompts with a long fixed lookahead, records the draft's features and the oracle
labels, measures the draft-step and verify(n) latencies on this machine, trains the DISCO classifier, tunes its
threshold for the highest tokens/s, and writes everything into the pair's dynexec_config.json (plus a
calibration.png). The algorithm is :mod:`optimum_dynexec.speculative.calibration`; this module is the glue.
"""

from __future__ import annotations

import logging
import platform
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .configuration import CONFIG_NAME, DynExecConfig

logger = logging.getLogger(__name__)

PLOT_NAME = "calibration.png"


def default_calibration_prompts() -> list[str]:
    """The calibration prompts shipped with the package (varied: code, chat, lists, explanations)."""
    text = resources.files("optimum_dynexec").joinpath("data/calibration_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _encode(tokenizer, prompt: str) -> np.ndarray:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def calibrate_pair(
    pair_dir: Union[str, Path],
    prompts: Optional[Sequence[str]] = None,
    *,
    max_new_tokens: int = 64,
    max_lookahead: int = 10,
    device: str = "CPU",
    ov_config: Optional[dict] = None,
    plot: bool = True,
    progress: bool = True,
    schedule: Optional[str] = None,
) -> dict:
    """Calibrate the pair saved in ``pair_dir`` and write the result into its dynexec_config.json.

    Args:
        pair_dir: a directory written by ``optimum-cli export dynexec`` or ``save_pretrained`` of a speculative model.
        prompts: calibration prompts (chat template applied when the tokenizer has one); default: the shipped set.
        max_new_tokens: tokens generated per prompt.
        max_lookahead: draft tokens per step while recording, and the cap of the calibrated policies.
        device / ov_config: where and how to run the pair (latencies are measured there).
        plot: write ``calibration.png`` (oracle vs chosen lookahead per step, acceptance curve, threshold sweep).
        progress: show a progress bar.
        schedule: also make this the pair's default ``num_assistant_tokens_schedule`` ("disco" or "cost").

    Returns:
        A summary: threshold, simulated tokens/s of static k / DISCO / oracle, classifier quality, latencies.
    """
    from transformers import AutoTokenizer

    from .models.speculative import OVSpeculativeModelForCausalLM

    pair_dir = Path(pair_dir)
    if not (pair_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{pair_dir / CONFIG_NAME} not found: calibration needs a pair exported with "
            "`optimum-cli export dynexec --model T --draft-model D OUT` (or save_pretrained of a speculative model)."
        )
    config = DynExecConfig.load(pair_dir)
    if config.draft in (None, "prompt-lookup"):
        raise ValueError(
            f"{pair_dir / CONFIG_NAME} has draft={config.draft!r}: only pairs with a draft model can be calibrated "
            "(the classifier reads the draft's distribution)."
        )
    if schedule not in (None, "disco", "cost"):
        raise ValueError(f"schedule must be 'disco' or 'cost', got {schedule!r}.")
    model = OVSpeculativeModelForCausalLM.from_pretrained(pair_dir, device=device, ov_config=ov_config)
    tokenizer = AutoTokenizer.from_pretrained(pair_dir)
    calibration, recording = calibrate_model(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                             max_lookahead=max_lookahead, progress=progress)
    calibration["device"] = device
    config.calibration = calibration
    if schedule is not None:
        config.speculation = config.speculation.updated(num_assistant_tokens_schedule=schedule,
                                                        max_assistant_tokens=max_lookahead)
    config.save(pair_dir)
    if plot:
        plot_calibration(recording, pair_dir / PLOT_NAME)
    return {"config": str(pair_dir / CONFIG_NAME), "plot": str(pair_dir / PLOT_NAME) if plot else None,
            "threshold": calibration["threshold"], "stop_rule": calibration["stop_rule"],
            **calibration["simulated_tokens_per_second"],
            "classifier_quality": calibration["classifier_quality"], "latencies": calibration["latencies"]}


def calibrate_model(
    model,
    tokenizer,
    prompts: Optional[Sequence[str]] = None,
    *,
    max_new_tokens: int = 64,
    max_lookahead: int = 10,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Calibrate a loaded ``OVSpeculativeModelForCausalLM`` with a draft model, in place (``model.calibration``).

    Returns the calibration section (as stored in dynexec_config.json) and the recording behind it (for plots).
    """
    from tqdm.auto import tqdm

    from .speculative.calibration import RecordingPolicy, acceptance_curve, train_classifier, tune_lookahead
    from .speculative.cost import measure_latencies
    from .speculative.drafters import ModelDrafter
    from .speculative.logits import TokenSelector
    from .speculative.loop import speculative_generate
    from .speculative.vocabulary import ranked_tokens

    if getattr(model, "draft_model", None) is None:
        raise ValueError("calibration needs a speculative model with a draft model (not prompt lookup).")
    if max_lookahead < 1 or max_new_tokens < 2:
        raise ValueError(f"need max_lookahead >= 1 and max_new_tokens >= 2, got {max_lookahead}, {max_new_tokens}.")
    prompts = list(prompts) if prompts is not None else default_calibration_prompts()
    if not prompts:
        raise ValueError("no calibration prompts: pass at least one (one prompt per line in --prompts FILE).")

    target = model._runner(model)
    draft_runner, vocabulary = model._draft_runner(model.draft_model)
    drafter = ModelDrafter(draft_runner, model.config.vocab_size, vocabulary)
    eos = model.generation_config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    selector = TokenSelector(eos_token_ids=eos_ids)
    recorder = RecordingPolicy(max_lookahead)

    encoded = [_encode(tokenizer, prompt) for prompt in prompts]
    written = list(encoded)
    for ids in tqdm(encoded, desc="calibrating: recording draft/target agreement", disable=not progress):
        result = speculative_generate(target, drafter, recorder, ids, selector, max_new_tokens, eos_token_ids=eos_ids)
        written.append(result.tokens)
    if not recorder.steps:
        raise ValueError("calibration produced no speculative steps: the prompts ended immediately; use longer prompts.")
    # the tokens prompts and target used rank first in a vocabulary-pruned draft head; latencies are measured
    # with the head the pair will run with
    draft_tokens = ranked_tokens(written)
    model.calibration = {"draft_vocabulary": draft_tokens}
    draft_runner, _ = model._draft_runner(model.draft_model)
    logger.info("measuring latencies of the draft step and of verification")
    # at a typical context length: attention makes each verified token cost more as the sequence grows
    latencies = measure_latencies(target, draft_runner, max(encoded, key=len), max_lookahead, repeats=3, rounds=4,
                                  context_tokens=256)
    classifier, quality = train_classifier(recorder.steps)
    # one verification width per compiled copy of the target the runtime may keep, plus the runner's own (no
    # per-shape work when calls alternate between them)
    max_widths = 1 + model._target_copies()
    threshold, stop_rule, widths, simulation = tune_lookahead(recorder.steps, classifier, latencies,
                                                              max_widths=max_widths)
    curve = acceptance_curve(recorder.steps)
    best_static = max(simulation["static"], key=simulation["static"].get)

    calibration = {
        "classifier": classifier.to_dict(),
        "threshold": threshold,
        "stop_rule": stop_rule,
        "verification_widths": list(widths),
        "draft_vocabulary": draft_tokens,
        "max_lookahead": max_lookahead,
        "mean_acceptance": float(np.mean([a for a in curve if a is not None])),
        "acceptance_by_position": curve,
        "latencies": latencies.to_dict(),
        "machine": {"processor": platform.processor() or platform.machine(), "node": platform.node()},
        "prompts": len(prompts),
        "steps": len(recorder.steps),
        "classifier_quality": quality,
        "simulated_tokens_per_second": {
            "disco": simulation["threshold_curve"][threshold],
            "best_static": simulation["static"][best_static],
            "best_static_k": int(best_static),
            "oracle": simulation["oracle"],
        },
    }
    model.calibration = calibration
    recording = {"steps": recorder.steps, "classifier": classifier, "threshold": threshold, "widths": widths,
                 "stop_rule": stop_rule,
                 "simulation": simulation, "curve": curve}
    return calibration, recording


def plot_calibration(recording: dict, path: Path) -> Path:
    """Oracle vs DISCO lookahead per step, the acceptance curve, and simulated tokens/s per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .speculative.calibration import disco_lookahead

    steps, classifier, threshold = recording["steps"], recording["classifier"], recording["threshold"]
    simulation, curve = recording["simulation"], recording["curve"]
    shown = steps[:150]
    oracle = [step.accepted for step in shown]
    cap = max(recording.get("widths") or (len(curve) + 1,)) - 1
    stop_rule = recording.get("stop_rule", "token")
    chosen = [min(disco_lookahead(step, classifier, threshold, stop_rule), cap) for step in shown]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    axes[0].step(range(len(shown)), oracle, where="mid", label="oracle (tokens the target accepts)")
    axes[0].step(range(len(shown)), chosen, where="mid", label=f"DISCO lookahead ({stop_rule} rule, threshold {threshold:.2f}, cap {cap})", alpha=0.8)
    axes[0].set(xlabel="speculative step", ylabel="draft tokens", title="Oracle vs chosen lookahead")
    axes[0].legend(fontsize=8)
    positions = [i + 1 for i, value in enumerate(curve) if value is not None]
    axes[1].plot(positions, [v for v in curve if v is not None], marker="o")
    axes[1].set(xlabel="position in the lookahead", ylabel="P(accepted | previous accepted)", ylim=(0, 1.02),
                title="Acceptance curve")
    thresholds = sorted(simulation["threshold_curve"])
    axes[2].plot(thresholds, [simulation["threshold_curve"][t] for t in thresholds], marker=".",
                 label=f"DISCO, verification widths {','.join(map(str, recording.get('widths', ())))}")
    best_k = max(simulation["static"], key=simulation["static"].get)
    axes[2].axhline(simulation["static"][best_k], color="gray", linestyle="--", label=f"best static k={best_k}")
    axes[2].axhline(simulation["oracle"], color="green", linestyle=":", label="oracle")
    axes[2].set(xlabel="threshold", ylabel="simulated tokens/s", title="Threshold tuning")
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

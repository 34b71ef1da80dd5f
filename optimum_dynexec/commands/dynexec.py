"""``optimum-cli dynexec``: tools for exported models. Verbs: ``calibrate`` (speculative pairs), ``label-steps``
and ``train-steps`` (StepSaver: diffusion step labels and the step predictor).

Import-light: optimum-cli imports this module at start-up; each verb imports what it needs in ``run()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from .common import CommandError, command_logger, exit_with_error, load_prompt_file

if TYPE_CHECKING:
    from argparse import ArgumentParser


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_calibratable_pair(pair_dir: Path):
    """The DynExecConfig of an exported pair that has a draft model; CommandError naming the problem otherwise."""
    from ..configuration import CONFIG_NAME, DynExecConfig

    if not pair_dir.exists():
        raise CommandError(f"{pair_dir} does not exist; pass the directory written by `optimum-cli export dynexec`.")
    if not pair_dir.is_dir():
        raise CommandError(f"{pair_dir} is not a directory; pass the directory written by `optimum-cli export dynexec`.")
    if not (pair_dir / CONFIG_NAME).is_file():
        raise CommandError(
            f"{pair_dir} has no {CONFIG_NAME}, so it is not an exported pair. Export one with "
            f"`optimum-cli export dynexec --model <target> --draft-model <draft> {pair_dir}` (or --self-draft)."
        )
    try:
        config = DynExecConfig.load(pair_dir)
    except ValueError as error:
        raise CommandError(str(error)) from error
    if config.draft in (None, "prompt-lookup"):
        kind = "a prompt-lookup pair" if config.draft == "prompt-lookup" else "a target without a draft"
        raise CommandError(
            f"{pair_dir / CONFIG_NAME} describes {kind}: calibration measures a draft model's acceptance and "
            "latency, so there is nothing to calibrate. Export the pair with --draft-model or --self-draft to "
            "calibrate it."
        )
    from ..exporters.pair import DRAFT_SUBFOLDER

    draft_dir = pair_dir / DRAFT_SUBFOLDER
    if not draft_dir.is_dir():
        raise CommandError(
            f"{pair_dir / CONFIG_NAME} names a {config.draft!r} draft in {draft_dir}, which is missing; copy the "
            "whole exported directory, or export the pair again."
        )
    return config


class CalibrateCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="calibrate",
        help="Calibrate an exported pair on this machine: draft acceptance, the DISCO lookahead classifier and "
        "draft/verify latencies, written into PAIR_DIR/dynexec_config.json (+ calibration.png).",
    )

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        parser.add_argument("pair_dir", type=Path, metavar="PAIR_DIR",
                            help="A directory written by `optimum-cli export dynexec` with a draft model.")
        parser.add_argument("--prompts", type=Path, default=None, metavar="FILE",
                            help="Text file with one calibration prompt per line (blank lines skipped). Defaults to "
                            "built-in prompts.")
        parser.add_argument("--max-new-tokens", type=_positive_int, default=64, metavar="N",
                            help="Tokens generated per prompt while calibrating (default: 64).")
        parser.add_argument("--max-lookahead", type=_positive_int, default=10, metavar="K",
                            help="Most draft tokens per step the calibration considers (default: 10).")
        parser.add_argument("--device", default="CPU",
                            help="OpenVINO device to calibrate on, where the pair will run (default: CPU).")
        parser.add_argument("--no-plot", action="store_true", help="Do not write PAIR_DIR/calibration.png.")

    def run(self):
        command_logger()
        try:
            check_calibratable_pair(self.args.pair_dir)
            prompts = None
            if self.args.prompts is not None:
                try:
                    prompts = load_prompt_file(self.args.prompts)
                except (OSError, ValueError) as error:
                    raise CommandError(f"--prompts: {error}") from error
            try:
                from ..calibration import calibrate_pair
            except ModuleNotFoundError as error:
                if error.name != "optimum_dynexec.calibration":
                    raise
                raise CommandError("this optimum-dynexec has no calibration (optimum_dynexec.calibration is "
                                   "missing); upgrade optimum-dynexec.") from error
            summary = calibrate_pair(
                self.args.pair_dir, prompts, max_new_tokens=self.args.max_new_tokens,
                max_lookahead=self.args.max_lookahead, device=self.args.device, plot=not self.args.no_plot,
                progress=True,
            )
        except CommandError as error:
            exit_with_error("dynexec calibrate", error)
        print(json.dumps(summary, indent=2, default=str))


def _ladder(text: str) -> tuple[int, ...]:
    import argparse

    from ..diffusion.labelling import check_ladder

    try:
        return check_ladder([int(part) for part in text.split(",") if part.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ssim(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"an SSIM threshold is in (0, 1], got {value}")
    return value


class LabelStepsCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="label-steps",
        help="StepSaver labelling: generate each prompt over a ladder of step counts (one seed), compare neighbouring "
        "images by SSIM and label each prompt with the fewest steps after which its image stops changing; writes "
        "OUT/labels.json, OUT/ssim_vs_steps.png, OUT/label_histogram.png.",
    )

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        from ..diffusion.labelling import DEFAULT_FULL_SSIM, DEFAULT_LADDER, DEFAULT_NEIGHBOUR_SSIM

        parser.add_argument("pipeline", type=Path, metavar="PIPELINE_DIR",
                            help="A Stable Diffusion pipeline: an OpenVINO export or a diffusers checkpoint directory.")
        parser.add_argument("--prompts", type=Path, required=True, metavar="FILE",
                            help="Text file with one prompt per line (blank lines skipped).")
        parser.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="Where to write the labels and plots.")
        parser.add_argument("--ladder", type=_ladder, default=DEFAULT_LADDER, metavar="N,N,...",
                            help=f"Increasing step counts to compare (default: {','.join(map(str, DEFAULT_LADDER))}).")
        parser.add_argument("--seed", type=int, default=0, help="Seed of every image (default: 0).")
        parser.add_argument("--guidance-scale", type=float, default=None,
                            help="Classifier-free guidance scale (default: the pipeline's, 7.5).")
        parser.add_argument("--neighbour-ssim", type=_ssim, default=DEFAULT_NEIGHBOUR_SSIM,
                            help=f"SSIM to the next rung that counts as 'stopped changing' (default: {DEFAULT_NEIGHBOUR_SSIM}).")
        parser.add_argument("--full-ssim", type=_ssim, default=DEFAULT_FULL_SSIM,
                            help=f"SSIM to the largest rung a label must reach (default: {DEFAULT_FULL_SSIM}).")
        parser.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU).")

    def run(self):
        command_logger()
        try:
            try:
                prompts = load_prompt_file(self.args.prompts)
            except (OSError, ValueError) as error:
                raise CommandError(f"--prompts: {error}") from error
            from ..step_saving import label_pipeline

            try:
                labels = label_pipeline(self.args.pipeline, prompts, self.args.out, ladder=self.args.ladder,
                                        seed=self.args.seed, guidance_scale=self.args.guidance_scale,
                                        neighbour_ssim=self.args.neighbour_ssim, full_ssim=self.args.full_ssim,
                                        device=self.args.device)
            except (FileNotFoundError, ValueError) as error:
                raise CommandError(str(error)) from error
        except CommandError as error:
            exit_with_error("dynexec label-steps", error)
        print(json.dumps(labels.summary(), indent=2))


class TrainStepsCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="train-steps",
        help="Train the StepSaver step predictor of a pipeline from `label-steps` labels (ridge regression on the "
        "pipeline's pooled text embedding, plain JSON); prints its held-out error.",
    )

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        parser.add_argument("pipeline", type=Path, metavar="PIPELINE_DIR",
                            help="The pipeline the labels were made with (its text encoder embeds the prompts).")
        parser.add_argument("--labels", type=Path, required=True, metavar="LABELS_JSON",
                            help="labels.json written by `optimum-cli dynexec label-steps`.")
        parser.add_argument("--out", type=Path, required=True, metavar="PREDICTOR_JSON",
                            help="Where to write the predictor (e.g. PIPELINE_DIR/step_predictor.json).")
        parser.add_argument("--min-steps", type=_positive_int, default=None,
                            help="Fewest steps 'auto' may choose (default: the quality floor, see --floor-ssim).")
        parser.add_argument("--max-steps", type=_positive_int, default=None, help="Most steps 'auto' may choose.")
        parser.add_argument("--target-ssim", type=_ssim, default=0.92,
                            help="Tune the predictor's safety margin so held-out prompts keep this mean SSIM to their "
                            "full-step images (default: 0.92).")
        parser.add_argument("--floor-ssim", type=_ssim, default=0.98,
                            help="Without --min-steps, 'auto' never goes below the fewest steps at which 95%% of the "
                            "labelled images reach this SSIM to their full-step images (default: 0.98).")
        parser.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU).")

    def run(self):
        command_logger()
        try:
            from ..step_saving import train_pipeline_predictor

            try:
                predictor = train_pipeline_predictor(self.args.pipeline, self.args.labels, self.args.out,
                                                     min_steps=self.args.min_steps, max_steps=self.args.max_steps,
                                                     target_ssim=self.args.target_ssim,
                                                     floor_ssim=self.args.floor_ssim, device=self.args.device)
            except (FileNotFoundError, ValueError) as error:
                raise CommandError(str(error)) from error
        except CommandError as error:
            exit_with_error("dynexec train-steps", error)
        print(json.dumps({k: v for k, v in predictor.metrics.items() if k != "labels"}, indent=2))


class DynexecCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="dynexec",
        help="Dynamic execution (optimum-dynexec) tools: calibrate exported pairs; label diffusion steps and train "
        "the step predictor.",
    )
    SUBCOMMANDS = tuple(
        CommandInfo(name=command.COMMAND.name, help=command.COMMAND.help, subcommand_class=command)
        for command in (CalibrateCommand, LabelStepsCommand, TrainStepsCommand)
    )

"""``optimum-cli dynexec``: tools for exported pairs. Verbs: ``calibrate`` (more, e.g. ``benchmark``, later).

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


class DynexecCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="dynexec",
        help="Dynamic execution (optimum-dynexec) tools for pairs exported with `optimum-cli export dynexec`.",
    )
    SUBCOMMANDS = (
        CommandInfo(name=CalibrateCommand.COMMAND.name, help=CalibrateCommand.COMMAND.help,
                    subcommand_class=CalibrateCommand),
    )

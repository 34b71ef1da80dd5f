"""``optimum-cli export dynexec``: export a target and its draft as one ready-to-run directory.

A sibling of optimum-intel's ``optimum-cli export openvino``: it accepts every ``export openvino`` flag with
the same meaning (they apply to the target) and adds the "Dynamic execution" group. The work itself is
:func:`optimum_dynexec.exporters.pair.export_pair`; this module only parses and validates arguments, so it
imports nothing heavy (optimum-cli imports it at start-up).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo
from optimum.commands.export.openvino import parse_args_openvino

from .common import CommandError, command_logger, exit_with_error, load_prompt_file

if TYPE_CHECKING:
    from argparse import ArgumentParser

LOOKAHEADS = ("constant", "heuristic", "disco", "cost")
DEFAULT_NUM_ASSISTANT_TOKENS = 5
DEFAULT_DRAFT_WEIGHT_FORMAT = "int4"
TASK = "text-generation-with-past"

_DESCRIPTION = """\
Export a target model and a draft to OpenVINO IR as one directory for speculative decoding:
OUT/ is the target (loadable unchanged by OVModelForCausalLM and openvino_genai.LLMPipeline),
OUT/draft/ the draft, OUT/dynexec_config.json how to run the pair. After `import optimum_dynexec`,
OVModelForCausalLM.from_pretrained(OUT) runs the pair. All `optimum-cli export openvino` options
apply to the target, with the same meaning; the draft gets --draft-weight-format."""

_EPILOG = """\
examples:
  optimum-cli export dynexec --model Qwen/Qwen2.5-Coder-1.5B-Instruct \\
      --draft-model Qwen/Qwen2.5-Coder-0.5B-Instruct --weight-format int8 qwen-pair
  optimum-cli export dynexec --model HuggingFaceTB/SmolLM2-135M-Instruct --self-draft smollm2-pair
  optimum-cli export dynexec --model T --draft-model D --lookahead disco --calibrate \\
      --calibration-prompts prompts.txt pair"""


class UsageError(CommandError):
    """Arguments that do not fit together: reported by argparse (usage line, exit status 2)."""


@dataclass
class PairExportOptions:
    """The "Dynamic execution" options, checked and resolved."""

    draft: str  # "model" | "int4-self" | "prompt-lookup" (DynExecConfig.draft)
    draft_model: Optional[str]  # what to export as the draft (the target itself for int4-self)
    draft_weight_format: Optional[str]
    lookahead: str
    num_assistant_tokens: int
    prompt_lookup_num_tokens: Optional[int]
    calibrate: bool
    calibration_prompts: Optional[Path]


def _choices_of(parser: "ArgumentParser", dest: str):
    return next((action.choices for action in parser._actions if action.dest == dest), None)


def parse_args_dynexec(parser: "ArgumentParser") -> None:
    """``export openvino``'s arguments (optimum-intel's own parser) + the "Dynamic execution" group."""
    parse_args_openvino(parser)
    task = next(action for action in parser._actions if action.dest == "task")
    task.default = TASK
    task.help = (
        f"The task to export the target and the draft for. Defaults to '{TASK}' (a decoder with a KV cache, "
        "which speculative decoding needs; upstream's 'auto' cannot infer the task of a local checkpoint). "
        "Other tasks are refused."
    )
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    group = parser.add_argument_group(
        "Dynamic execution",
        "What drafts for the target (exactly one of --draft-model, --self-draft, --prompt-lookup) and how far it looks ahead.",
    )
    drafts = group.add_mutually_exclusive_group(required=True)
    drafts.add_argument(
        "--draft-model",
        metavar="ID_OR_PATH",
        help="Model ID on huggingface.co or path on disk of a smaller model with the same tokenizer as the target; "
        "exported to OUT/draft with --draft-weight-format. A draft whose tokenizer differs is refused before "
        "anything is written.",
    )
    drafts.add_argument(
        "--self-draft",
        action="store_true",
        help="No draft model: the draft is the target exported again with INT4 weights (NNCF INT4_ASYM, group size "
        "dividing the hidden size) into OUT/draft (self-speculation through quantization).",
    )
    drafts.add_argument(
        "--prompt-lookup",
        action="store_true",
        help="No draft model: draft by n-gram prompt lookup (copies continuations found in the prompt); no OUT/draft.",
    )
    group.add_argument(
        "--draft-weight-format",
        choices=_choices_of(parser, "weight_format"),
        default=None,
        help=f"The weight format of the exported draft (same choices as --weight-format). Defaults to "
        f"'{DEFAULT_DRAFT_WEIGHT_FORMAT}'. --self-draft always uses int4.",
    )
    group.add_argument(
        "--lookahead",
        choices=LOOKAHEADS,
        default="constant",
        help="How many tokens the draft proposes per step: 'constant' (always --num-assistant-tokens), 'heuristic' "
        "(+2 after a fully accepted step, -1 otherwise, as transformers does), 'disco' (a classifier trained by "
        "calibration stops drafting when the next token is unlikely to be accepted; needs --calibrate), 'cost' "
        "(drafts while the expected tokens per second rise, from draft/verify latencies measured on the machine "
        "that runs the model). Defaults to 'constant'.",
    )
    group.add_argument(
        "--num-assistant-tokens",
        type=int,
        default=None,
        metavar="N",
        help=f"Draft tokens per step (the start value of 'heuristic'; with --prompt-lookup, the tokens copied per "
        f"step). Defaults to {DEFAULT_NUM_ASSISTANT_TOKENS} (10 for --prompt-lookup).",
    )
    group.add_argument(
        "--calibrate",
        action="store_true",
        help="After the export, calibrate the pair (draft acceptance on the calibration prompts, DISCO classifier, "
        "draft/verify latencies of this machine); writes the results into OUT/dynexec_config.json and a plot to "
        "OUT/calibration.png. Same as running `optimum-cli dynexec calibrate OUT` later.",
    )
    group.add_argument(
        "--calibration-prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="Text file with one calibration prompt per line (blank lines skipped); needs --calibrate. Defaults to "
        "built-in prompts.",
    )


def resolve_options(args: argparse.Namespace) -> PairExportOptions:
    """Check that the flags fit together (raises :class:`UsageError`) and fill in the defaults."""
    if getattr(args, "disable_stateful", False):
        raise UsageError(
            "--disable-stateful is not supported: speculative decoding rolls the KV cache back after rejected draft "
            "tokens, which needs stateful models (the default). Drop --disable-stateful."
        )
    if args.task in ("auto", "text-generation"):
        args.task = TASK  # a causal LM with its KV cache is the only thing a pair can be
    if args.task != TASK:
        raise UsageError(f"--task {args.task} is not supported: speculative pairs are causal language models "
                         f"exported with their KV cache; use --task {TASK} (the default).")
    if args.num_assistant_tokens is not None and args.num_assistant_tokens < 1:
        raise UsageError(f"--num-assistant-tokens must be >= 1, got {args.num_assistant_tokens}.")
    if args.calibration_prompts is not None and not args.calibrate:
        raise UsageError("--calibration-prompts is only used by calibration: add --calibrate.")
    if args.prompt_lookup:
        for flag, value in (("--draft-weight-format", args.draft_weight_format), ("--calibrate", args.calibrate)):
            if value:
                raise UsageError(f"{flag} needs a draft model, and --prompt-lookup has none: drop {flag}.")
        if args.lookahead == "disco":
            raise UsageError(
                "--lookahead disco needs a draft model (its classifier reads the draft's probabilities); with "
                "--prompt-lookup use 'constant', 'heuristic' or 'cost'."
            )
        return PairExportOptions(
            draft="prompt-lookup", draft_model=None, draft_weight_format=None, lookahead=args.lookahead,
            num_assistant_tokens=args.num_assistant_tokens or DEFAULT_NUM_ASSISTANT_TOKENS,
            prompt_lookup_num_tokens=args.num_assistant_tokens, calibrate=False, calibration_prompts=None,
        )
    if args.lookahead == "disco" and not args.calibrate:
        raise UsageError(
            "--lookahead disco needs a classifier trained on this pair: add --calibrate (optionally with "
            "--calibration-prompts FILE), or export with another --lookahead and run `optimum-cli dynexec "
            f"calibrate {args.output}` later."
        )
    if args.self_draft:
        if args.draft_weight_format not in (None, "int4"):
            raise UsageError(
                f"--self-draft exports the target with int4 weights; --draft-weight-format {args.draft_weight_format} "
                f"does not apply (for another format pass --draft-model {args.model} --draft-weight-format "
                f"{args.draft_weight_format})."
            )
        draft, draft_model, weight_format = "int4-self", args.model, "int4"
    else:
        draft, draft_model = "model", args.draft_model
        weight_format = args.draft_weight_format or DEFAULT_DRAFT_WEIGHT_FORMAT
    return PairExportOptions(
        draft=draft, draft_model=draft_model, draft_weight_format=weight_format, lookahead=args.lookahead,
        num_assistant_tokens=args.num_assistant_tokens or DEFAULT_NUM_ASSISTANT_TOKENS, prompt_lookup_num_tokens=None,
        calibrate=args.calibrate, calibration_prompts=args.calibration_prompts,
    )


class DynexecExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="dynexec",
        help="Export a target + draft pair to OpenVINO IR for speculative decoding (optimum-dynexec).",
    )

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        return parse_args_dynexec(parser)

    def run(self):
        command_logger()
        try:
            options = resolve_options(self.args)
        except UsageError as error:
            self.parser.error(str(error))  # exits with status 2 and the usage line
        from ..exporters.pair import PairExportError, export_pair

        try:
            prompts = None
            if options.calibration_prompts is not None:
                try:
                    prompts = load_prompt_file(options.calibration_prompts)
                except (OSError, ValueError) as error:
                    raise CommandError(f"--calibration-prompts: {error}") from error
            export_pair(self.args, options, prompts=prompts)
        except (CommandError, PairExportError) as error:
            exit_with_error("export dynexec", error)

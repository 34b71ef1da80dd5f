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
from typing import TYPE_CHECKING, Optional, Union

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo
from optimum.commands.export.openvino import parse_args_openvino

from ..configuration import SpeculationConfig
from .common import CommandError, command_logger, exit_with_error, load_prompt_file

if TYPE_CHECKING:
    from argparse import ArgumentParser

LOOKAHEADS = ("constant", "heuristic", "disco", "cost")
DEFAULT_NUM_ASSISTANT_TOKENS = SpeculationConfig.num_assistant_tokens
DEFAULT_DRAFT_WEIGHT_FORMAT = "int4"
TASK = "text-generation-with-past"
DIFFUSION_TASK = "text-to-image"

_DESCRIPTION = """\
Export a target model and a draft to OpenVINO IR as one directory for speculative decoding:
OUT/ is the target (loadable unchanged by OVModelForCausalLM and openvino_genai.LLMPipeline),
OUT/draft/ the draft, OUT/dynexec_config.json how to run the pair. After `import optimum_dynexec`,
OVModelForCausalLM.from_pretrained(OUT) runs the pair. All `optimum-cli export openvino` options
apply to the target, with the same meaning; the draft gets --draft-weight-format."""

_EPILOG = """\
a Stable Diffusion pipeline with its StepSaver step predictor (num_inference_steps="auto"):
  optimum-cli export dynexec --model SD_DIR --step-predictor step_predictor.json sd-steps

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
    draft_lookup_num_tokens: int = SpeculationConfig.draft_lookup_num_tokens
    draft_vocab_size: Optional[int] = SpeculationConfig.draft_vocab_size
    draft_after_first_token: bool = SpeculationConfig.draft_after_first_token
    dq_group_size: Union[int, str] = "auto"  # the target's; "auto": runtime_options.auto_dq_group_size


@dataclass
class StepSaverExportOptions:
    """``--step-predictor``: a diffusion pipeline exported with its step predictor."""

    step_predictor: Path
    convergence_guard: bool
    min_steps: Optional[int]
    max_steps: Optional[int]


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
        "What drafts for the target (exactly one of --draft-model, --self-draft, --prompt-lookup) and how far it looks "
        "ahead; or, for a Stable Diffusion pipeline, --step-predictor.",
    )
    drafts = group.add_mutually_exclusive_group(required=False)
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
    drafts.add_argument(
        "--step-predictor",
        type=Path,
        metavar="FILE",
        help="Export a Stable Diffusion pipeline (--task text-to-image, the default with this flag) with this StepSaver "
        "step predictor (a step_predictor.json from `optimum-cli dynexec train-steps`) bundled: after `import "
        "optimum_dynexec`, OVStableDiffusionPipeline.from_pretrained(OUT) accepts num_inference_steps='auto'. The "
        "predictor must have been trained on this pipeline's text encoder (checked).",
    )
    group.add_argument(
        "--convergence-guard",
        action="store_true",
        help="With --step-predictor: stop denoising by default once the predicted clean latent stops changing.",
    )
    group.add_argument("--min-steps", type=int, default=None, metavar="N",
                       help="With --step-predictor: fewest steps 'auto' may choose (default: the predictor's).")
    group.add_argument("--max-steps", type=int, default=None, metavar="N",
                       help="With --step-predictor: most steps 'auto' may choose (default: the predictor's).")
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
        "--draft-lookup-num-tokens",
        type=int,
        default=None,
        metavar="N",
        help=f"N-gram guesses the draft model checks per call under greedy drafting (cascade drafting: a run of right "
        f"guesses costs the draft one call instead of one per token; output unchanged); guesses also fill the padding "
        f"of the target's verification calls. 0 turns both off. Defaults to "
        f"{SpeculationConfig.draft_lookup_num_tokens}.",
    )
    group.add_argument(
        "--draft-after-first-token",
        action="store_true",
        help="Let the target's prefill emit the first token alone and the draft read the prompt in the second step "
        "(OpenVINO GenAI's order): the first token comes sooner (the draft's prefill and first drafts no longer "
        "precede it), a generation takes one target call more. Saved as the pair's default.",
    )
    group.add_argument(
        "--dq-group-size",
        default="auto",
        metavar="N",
        help="Group size of the dynamic quantization of the target's activations, written into the target's IR "
        "(runtime option DYNAMIC_QUANTIZATION_GROUP_SIZE, as optimum-intel's `dq_group_size`; OVModelForCausalLM and "
        "openvino_genai.LLMPipeline both apply it). 'auto' (the default): 128 for int8 weights, where verifying "
        "several tokens in one call then costs about what one token does (Qwen2.5-Coder-1.5B int8 on an AVX-512 "
        "CPU: 7 tokens 68 ms against 77 ms with OpenVINO's default groups of 32, one token ~62 ms either way), the "
        "weights' own group size for grouped int4 weights (Qwen2.5-Coder-0.5B, groups of 128: 7 tokens 22 ms "
        "against 26 ms); an IR that already asks for a size (an optimum-intel default for the model) keeps it, "
        "floating-point targets are left as exported. 0 turns dynamic quantization off.",
    )
    group.add_argument(
        "--draft-vocab-size",
        type=int,
        default=None,
        metavar="N",
        help=f"Tokens the draft model's LM head keeps when it drafts (the ones calibration saw the target write "
        f"first, then the tokenizer's order): a cheaper draft step, output unchanged. 0 keeps the whole vocabulary. "
        f"Defaults to {SpeculationConfig.draft_vocab_size}.",
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


def resolve_step_saver_options(args: argparse.Namespace) -> StepSaverExportOptions:
    """The --step-predictor export's options (raises :class:`UsageError` for flags that do not apply)."""
    for flag, value in (("--draft-weight-format", args.draft_weight_format), ("--calibrate", args.calibrate),
                        ("--calibration-prompts", args.calibration_prompts),
                        ("--num-assistant-tokens", args.num_assistant_tokens),
                        ("--draft-lookup-num-tokens", args.draft_lookup_num_tokens is not None),
                        ("--draft-vocab-size", args.draft_vocab_size is not None),
                        ("--draft-after-first-token", args.draft_after_first_token),
                        ("--dq-group-size", None if args.dq_group_size == "auto" else args.dq_group_size),
                        ("--lookahead", None if args.lookahead == "constant" else args.lookahead)):
        if value:
            raise UsageError(f"{flag} is for speculative pairs; --step-predictor exports a diffusion pipeline: drop {flag}.")
    if args.task in (TASK, "auto"):
        args.task = DIFFUSION_TASK
    if args.task != DIFFUSION_TASK:
        raise UsageError(f"--step-predictor needs --task {DIFFUSION_TASK} (a Stable Diffusion pipeline), got --task {args.task}.")
    for flag, value in (("--min-steps", args.min_steps), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}.")
    if args.min_steps is not None and args.max_steps is not None and args.min_steps > args.max_steps:
        raise UsageError(f"--min-steps {args.min_steps} is above --max-steps {args.max_steps}.")
    return StepSaverExportOptions(args.step_predictor, args.convergence_guard, args.min_steps, args.max_steps)


def resolve_options(args: argparse.Namespace):
    """Check that the flags fit together (raises :class:`UsageError`) and fill in the defaults: a
    :class:`PairExportOptions`, or a :class:`StepSaverExportOptions` with --step-predictor."""
    if getattr(args, "step_predictor", None) is not None:
        return resolve_step_saver_options(args)
    for flag, value in (("--convergence-guard", getattr(args, "convergence_guard", False)),
                        ("--min-steps", getattr(args, "min_steps", None)), ("--max-steps", getattr(args, "max_steps", None))):
        if value:
            raise UsageError(f"{flag} applies to --step-predictor exports (diffusion pipelines) only.")
    if not (args.draft_model or args.self_draft or args.prompt_lookup):
        raise UsageError("say what drafts for the target: one of --draft-model ID, --self-draft, --prompt-lookup "
                         "(or --step-predictor FILE for a Stable Diffusion pipeline).")
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
    if args.draft_lookup_num_tokens is not None and args.draft_lookup_num_tokens < 0:
        raise UsageError(f"--draft-lookup-num-tokens must be >= 0 (0 turns the guesses off), got "
                         f"{args.draft_lookup_num_tokens}.")
    if args.draft_vocab_size is not None and args.draft_vocab_size < 0:
        raise UsageError(f"--draft-vocab-size must be >= 0 (0 keeps the draft's whole vocabulary), got "
                         f"{args.draft_vocab_size}.")
    if args.calibration_prompts is not None and not args.calibrate:
        raise UsageError("--calibration-prompts is only used by calibration: add --calibrate.")
    dq_group_size = _dq_group_size(args.dq_group_size)
    if args.prompt_lookup:
        for flag, value in (("--draft-weight-format", args.draft_weight_format), ("--calibrate", args.calibrate),
                            ("--draft-lookup-num-tokens", args.draft_lookup_num_tokens is not None),
                            ("--draft-vocab-size", args.draft_vocab_size is not None),
                            ("--draft-after-first-token", args.draft_after_first_token)):
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
            dq_group_size=dq_group_size,
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
        draft_lookup_num_tokens=(SpeculationConfig.draft_lookup_num_tokens if args.draft_lookup_num_tokens is None
                                 else args.draft_lookup_num_tokens),
        draft_vocab_size=(SpeculationConfig.draft_vocab_size if args.draft_vocab_size is None
                          else args.draft_vocab_size),
        draft_after_first_token=args.draft_after_first_token, dq_group_size=dq_group_size,
    )


def _dq_group_size(value: str) -> Union[int, str]:
    """--dq-group-size: "auto" or an integer >= 0."""
    if value == "auto":
        return value
    if not value.isdecimal():  # isdigit() also takes '²', which int() refuses
        raise UsageError(f"--dq-group-size must be 'auto' or an integer >= 0 (0 turns dynamic quantization off), "
                         f"got {value!r}.")
    return int(value)


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

        if isinstance(options, StepSaverExportOptions):
            from ..exporters.step_saver import export_step_saver

            try:
                export_step_saver(self.args, options)
            except (CommandError, PairExportError, FileNotFoundError) as error:
                exit_with_error("export dynexec", error)
            return
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

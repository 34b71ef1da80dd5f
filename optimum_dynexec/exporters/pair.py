"""Export a speculative pair: the target at the root, the draft in ``draft/``, ``dynexec_config.json``.

Both models go through optimum-intel's own ``optimum-cli export openvino`` code (``OVExportCommand``), so
weight-format defaults (int8 for models over 1B parameters), quantization options and the OpenVINO tokenizer
IR (``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml``) are upstream's. Everything is written into a
temporary directory beside the output and renamed into place at the end: on any failure the output is left
as it was and no temporary directory remains.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Optional, Union

from ..configuration import CONFIG_NAME, DynExecConfig, SpeculationConfig
from .atomic import atomic_directory
from .runtime_options import write_dq_group_size

if TYPE_CHECKING:
    from ..commands.export import PairExportOptions

logger = logging.getLogger(__name__)

DRAFT_SUBFOLDER = "draft"  # as optimum_dynexec.models.speculative.DRAFT_SUBFOLDER (kept import-light here)
#: `export openvino` arguments the draft shares with the target; quantization flags stay the target's own
CARRIED_TO_DRAFT = ("task", "framework", "trust_remote_code", "cache_dir", "library", "variant",
                    "disable_convert_tokenizer")
#: carried too when the draft is the target itself (--self-draft)
CARRIED_TO_SELF_DRAFT = CARRIED_TO_DRAFT + ("pad_token_id", "model_kwargs")


class PairExportError(ValueError):
    """An export refused for a reason the user can fix (the message says how)."""


def check_output_directory(output: Union[str, Path]) -> bool:
    """Refuse an output that is a file, or a non-empty directory that is not a previous pair export.

    Returns True when ``output`` is a previous export (it will be replaced once the new one is complete).
    """
    output = Path(output)
    if output.is_file():
        raise PairExportError(f"the output {output} is a file; pass the path of a directory to create.")
    if output.is_dir() and any(output.iterdir()):
        if (output / CONFIG_NAME).is_file():
            return True
        raise PairExportError(
            f"the output directory {output} exists and is not empty, and it is not a previous "
            f"`optimum-cli export dynexec` export (it has no {CONFIG_NAME}); nothing was written. Choose a new "
            "directory, or empty or remove this one yourself."
        )
    return False


def export_pair(args: argparse.Namespace, options: "PairExportOptions", prompts: Optional[list[str]] = None) -> Path:
    """Export the pair described by ``args`` (an ``export openvino`` namespace: model, output, weight format,
    ...) and ``options`` (the resolved "Dynamic execution" flags) into ``args.output``; returns that path."""
    output = Path(args.output)
    replacing = check_output_directory(output)
    _check_source(args.model, "--model")
    if options.draft == "model" and options.draft_model is not None:
        _check_source(options.draft_model, "--draft-model")
        _precheck_tokenizers(args.model, options.draft_model)
    started = time.perf_counter()
    with atomic_directory(output, replace=True) as tmp:
        logger.info("exporting target: %s (weight format: %s)", args.model, args.weight_format or "upstream default")
        run_openvino_export(_namespace(args, output=tmp))
        dq_group_size = write_dq_group_size(tmp, options.dq_group_size)
        if dq_group_size is not None:
            logger.info("target: activations quantized in groups of %d (DYNAMIC_QUANTIZATION_GROUP_SIZE)", dq_group_size)
        _log_done("target", tmp, started)
        if options.draft != "prompt-lookup":
            draft_dir = tmp / DRAFT_SUBFOLDER
            stage = time.perf_counter()
            logger.info("exporting draft: %s (weight format: %s)%s", options.draft_model, options.draft_weight_format,
                        " - the target itself, with int4 weights" if options.draft == "int4-self" else "")
            run_openvino_export(_draft_namespace(args, options, draft_dir, target_dir=tmp))
            _log_done("draft", draft_dir, stage)
            if options.draft == "model":
                logger.info("checking that the draft shares the target's tokenizer")
                _check_tokenizers(tmp, draft_dir, source=(args.model, options.draft_model))
        config = DynExecConfig(draft=options.draft, speculation=_speculation(options), extra=_provenance(args, options))
        config.save(tmp)
        logger.info("wrote %s (draft: %s, lookahead: %s)", CONFIG_NAME, options.draft, options.lookahead)
        if options.calibrate:
            stage = time.perf_counter()
            logger.info("calibrating the pair on %s prompts",
                        len(prompts) if prompts is not None else "the built-in")
            from ..calibration import calibrate_pair

            calibrate_pair(tmp, prompts=prompts, progress=True)
            logger.info("calibrated in %.0f s", time.perf_counter() - stage)
        if replacing:
            logger.info("replacing the previous export in %s", output)
    logger.info("done in %.0f s: %s", time.perf_counter() - started, output)
    return output


def run_openvino_export(args: argparse.Namespace) -> None:
    """Run optimum-intel's ``optimum-cli export openvino`` on an argument namespace."""
    from optimum.commands.export.openvino import OVExportCommand

    command = OVExportCommand(None, args=args, command=OVExportCommand.COMMAND, from_defaults_factory=True,
                              parser=_openvino_parser())
    command.run()


def _openvino_parser() -> argparse.ArgumentParser:
    from optimum.commands.export.openvino import parse_args_openvino

    parser = argparse.ArgumentParser("optimum-cli export openvino", add_help=False)
    parse_args_openvino(parser)
    return parser


def _namespace(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def _draft_namespace(args, options: "PairExportOptions", output: Path, target_dir: Path) -> argparse.Namespace:
    """``export openvino`` arguments of the draft: upstream defaults, the target's loading options, the draft
    weight format (with an INT4 group size the layers admit)."""
    draft = _openvino_parser().parse_args(["--model", str(options.draft_model), str(output)])
    carried = CARRIED_TO_SELF_DRAFT if options.draft == "int4-self" else CARRIED_TO_DRAFT
    for name in carried:
        setattr(draft, name, getattr(args, name))
    draft.weight_format = options.draft_weight_format
    if options.draft_weight_format == "int4":
        config = _read_config(target_dir) if options.draft == "int4-self" else _source_config(args, options.draft_model)
        draft.group_size = _int4_group_size(config)
        if draft.group_size is not None:
            logger.info("draft INT4 group size %d (upstream's 128 does not divide the layer widths)", draft.group_size)
    return draft


def _int4_group_size(config) -> Optional[int]:
    """None (upstream default, 128) when 128 divides the hidden and intermediate sizes, else the largest of
    64 / 32 / 16 that does (SmolLM2's 576 needs 64)."""
    from .weight_compression import int4_group_size

    sizes = [getattr(config, name, None) for name in ("hidden_size", "intermediate_size")]
    sizes = [int(size) for size in sizes if isinstance(size, int) and size > 0]
    if not sizes:
        return None
    width = math.gcd(*sizes)
    if width % 128 == 0:
        return None
    return int4_group_size(width)


def _read_config(directory: Path):
    """config.json of a directory as attributes (enough for vocabulary and layer sizes), or None."""
    try:
        return SimpleNamespace(**json.loads((Path(directory) / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _source_config(args, model_id: str):
    path = Path(model_id)
    if path.is_dir():
        return _read_config(path)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_id, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code)
    except Exception:  # the export itself reports unreachable models
        return None


def _check_source(model_id: str, flag: str) -> None:
    """Refuse a local OpenVINO export as a source: the exporter converts transformers checkpoints."""
    path = Path(model_id)
    if not (path.is_dir() and (path / "openvino_model.xml").is_file()):
        return
    if any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        return
    raise PairExportError(
        f"{flag} {model_id} is an OpenVINO export, not a transformers checkpoint; `optimum-cli export dynexec` "
        "converts checkpoints (a directory with config.json and weights, or a hub id): pass the original one. "
        "To pair models that are already exported, load them in Python and save the pair: "
        "`OVModelForCausalLM.from_pretrained(target_dir, draft_model=draft_dir).save_pretrained(OUT)` "
        "after `import optimum_dynexec`."
    )


def _fix_hint() -> str:
    return " On the command line: --self-draft (the target's INT4 copy drafts) or --prompt-lookup (no draft model)."


def _precheck_tokenizers(target: str, draft: str) -> None:
    """Fail before exporting anything when both checkpoints are local and their tokenizers differ."""
    target_dir, draft_dir = Path(target), Path(draft)
    if not (target_dir.is_dir() and draft_dir.is_dir()):
        return  # hub ids: checked on the exported copies
    target_config, draft_config = _read_config(target_dir), _read_config(draft_dir)
    if target_config is None or draft_config is None:
        return  # not transformers checkpoints: the export reports it
    _check_tokenizers(target_dir, draft_dir, configs=(target_config, draft_config))


def _check_tokenizers(target_dir: Path, draft_dir: Path, configs=None, source=None) -> None:
    from ..models.compatibility import check_draft_compatible

    target_config, draft_config = configs or (_read_config(target_dir), _read_config(draft_dir))
    try:
        check_draft_compatible(target_config, draft_config, target_dir, draft_dir)
    except ValueError as error:
        message = str(error)
        if source is not None:  # name the user's paths, not the temporary directory's
            message = message.replace(str(draft_dir), str(source[1])).replace(str(target_dir), str(source[0]))
        raise PairExportError(f"{message}{_fix_hint()}") from error


def _speculation(options: "PairExportOptions") -> SpeculationConfig:
    return SpeculationConfig(
        num_assistant_tokens=options.num_assistant_tokens,
        num_assistant_tokens_schedule=options.lookahead,
        prompt_lookup_num_tokens=options.prompt_lookup_num_tokens,
        draft_lookup_num_tokens=options.draft_lookup_num_tokens,
        draft_vocab_size=options.draft_vocab_size,
        draft_after_first_token=options.draft_after_first_token,
    )


def _provenance(args, options: "PairExportOptions") -> dict:
    from importlib import metadata

    versions = {}
    for package in ("optimum-dynexec", "optimum-intel", "optimum", "openvino", "openvino-tokenizers", "nncf",
                    "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "export": {
            "command": "optimum-cli export dynexec",
            "target": str(args.model),
            "target_weight_format": args.weight_format,
            "target_dq_group_size": options.dq_group_size,
            "draft_model": None if options.draft_model is None else str(options.draft_model),
            "draft_weight_format": options.draft_weight_format,
            "versions": versions,
        }
    }


def _log_done(what: str, directory: Path, started: float) -> None:
    size = sum(f.stat().st_size for f in directory.rglob("*.bin") if f.is_file())
    logger.info("%s exported in %.0f s (%.1f MB of weights)", what, time.perf_counter() - started, size / 2**20)

"""Export a Stable Diffusion pipeline with its StepSaver step predictor bundled.

The pipeline goes through optimum-intel's ``optimum-cli export openvino`` code (``OVExportCommand``) into a
temporary directory; the predictor is checked against the exported text encoder, copied in as
``step_predictor.json`` with a ``step-saver`` ``dynexec_config.json``, and the directory renamed into place.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_directory
from .pair import PairExportError, _log_done, _namespace, check_output_directory, run_openvino_export

if TYPE_CHECKING:
    from ..commands.export import StepSaverExportOptions

logger = logging.getLogger(__name__)


def export_step_saver(args: argparse.Namespace, options: "StepSaverExportOptions") -> Path:
    """Export ``args.model`` (a diffusers Stable Diffusion checkpoint) to ``args.output`` with the predictor."""
    from ..diffusion.predictor import StepPredictor

    output = Path(args.output)
    replacing = check_output_directory(output)
    try:
        predictor = StepPredictor.load(options.step_predictor)  # before the long export: a bad file fails fast
    except (FileNotFoundError, ValueError) as error:
        raise PairExportError(f"--step-predictor: {error}") from error
    if options.min_steps or options.max_steps:
        try:
            predictor = predictor.with_range(options.min_steps, options.max_steps)
        except ValueError as error:
            raise PairExportError(f"--min-steps/--max-steps: {error}") from error
    started = time.perf_counter()
    with atomic_directory(output, replace=True) as tmp:
        logger.info("exporting pipeline: %s", args.model)
        run_openvino_export(_namespace(args, output=tmp))
        _log_done("pipeline", tmp, started)
        if not (tmp / "model_index.json").is_file() or not (tmp / "unet").is_dir():
            raise PairExportError(f"{args.model} did not export as a Stable Diffusion pipeline (no unet/ in the "
                                  "export); --step-predictor needs a StableDiffusionPipeline checkpoint.")
        from ..models.diffusion import OVStepSaverStableDiffusionPipeline, write_step_saver_files

        pipe = OVStepSaverStableDiffusionPipeline.from_pretrained(tmp, compile=False)
        try:
            pipe.set_step_predictor(predictor)  # checks the predictor reads this text encoder
        except ValueError as error:
            raise PairExportError(f"--step-predictor {options.step_predictor}: {error}") from error
        write_step_saver_files(tmp, predictor, True if options.convergence_guard else None)
        del pipe
        logger.info("bundled the step predictor (steps %d-%d)", predictor.min_steps, predictor.max_steps)
        if replacing:
            logger.info("replacing the previous export in %s", output)
    logger.info("done in %.0f s: %s", time.perf_counter() - started, output)
    return output

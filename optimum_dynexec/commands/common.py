"""Helpers shared by the optimum-cli commands (import-light)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Union

LOGGER_NAME = "optimum_dynexec"


class CommandError(Exception):
    """An expected failure of a command (bad input): reported as one message, without a traceback."""


def load_prompt_file(path: Union[str, Path]) -> list[str]:
    """Prompts from a text file, one per line; blank lines are skipped.

    Raises FileNotFoundError for a missing file and ValueError for a file without any prompt.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist; pass a text file with one prompt per line.")
    if not path.is_file():
        raise ValueError(f"prompt file {path} is not a file; pass a text file with one prompt per line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"prompt file {path} is not UTF-8 text ({error}); pass a text file with one prompt per line.") from error
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts (it is empty or blank); write one prompt per line.")
    return prompts


def command_logger() -> logging.Logger:
    """The package logger, printing INFO progress lines to stderr when nothing else configured it."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[dynexec] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return logger


def exit_with_error(command: str, error: BaseException) -> None:
    """Print ``error`` as one line prefixed by the command name, and exit with status 1."""
    print(f"optimum-cli {command}: error: {error}", file=sys.stderr)
    raise SystemExit(1)

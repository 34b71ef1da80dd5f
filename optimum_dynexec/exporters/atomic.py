"""Atomic directory writes: build next to the destination, then rename into place."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_directory(destination: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary directory beside ``destination``; on success it replaces ``destination``.

    On error the temporary directory is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    if destination.is_file():
        raise ValueError(f"{destination} is a file; pass a directory to save into.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield tmp
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            destination.rename(old / destination.name)
            tmp.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

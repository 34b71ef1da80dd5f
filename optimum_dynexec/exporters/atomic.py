"""Atomic directory writes: build next to the destination, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union


def current_umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(destination: Union[str, Path], replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``destination``; on success it becomes ``destination``.

    ``replace``: an existing ``destination`` is replaced (save_pretrained); otherwise an existing one wins
    (a cache entry another process finished first). On error the temporary directory is removed and
    ``destination`` is left as it was.
    """
    destination = Path(destination)
    if destination.is_file():
        raise ValueError(f"{destination} is a file; pass a directory to save into.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; saved models and caches may be shared
        if destination.exists():
            if not replace:
                return
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            destination.rename(old / destination.name)
            tmp.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

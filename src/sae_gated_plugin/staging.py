"""Write a folder's worth of files where nobody reads them, then move them into place.

Saves of checkpoints, final SAEs and activation caches go through here, so a save that fails or
is interrupted half-way leaves nothing that a later load would trust.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staging_folder(path: Path) -> Iterator[Path]:
    """``path`` cleared of any earlier failed attempt; whatever is still there on exit (the
    body failed, or moved only part of it into place) is removed, whatever happens."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

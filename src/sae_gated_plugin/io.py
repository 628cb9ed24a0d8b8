"""The one JSON reader and the one atomic writer of the package, and the staging folder.

Every file the plugin writes goes through :func:`atomic_write_bytes` (a temporary file in the
same folder, fsynced, then ``os.replace``d onto the target) or through :func:`staging_folder`
(a folder's worth of files, moved into place when complete), so an interrupted or failed write
never leaves a half-written file that a later read would trust. Written files get the usual
``0o666 & ~umask`` permissions, not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def read_json(
    path: Path, *, error: type[GatedPluginError] = GatedPluginError, expect_object: bool = True
) -> Any:
    """Parse a JSON file; a missing, unreadable or invalid file raises ``error`` naming it.

    With ``expect_object`` (the default) anything but a JSON object is an error too.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a JSON file") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if expect_object and not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def file_mode() -> int:
    """The permissions ``open`` gives a new file: ``0o666 & ~umask``."""
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the whole new one.

    The parent folder is created if needed; the file gets ``0o666 & ~umask`` permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def follow_umask(folder: Path) -> None:
    """Give every file in ``folder`` (recursively) ``0o666 & ~umask`` permissions, as ``open``
    would: libraries such as safetensors write private 0600 files."""
    mode = file_mode()
    for file in folder.rglob("*"):
        if file.is_file():
            os.chmod(file, mode)


def atomic_write_text(path: Path | str, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: Path | str, value: Any) -> None:
    """Write ``value`` as indented strict JSON (no NaN/Infinity), atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


@contextmanager
def staging_folder(path: Path) -> Iterator[Path]:
    """``path`` cleared of any earlier failed attempt; whatever is still there on exit (the
    body failed, or moved only part of it into place) is removed, whatever happens."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path``, waiting for it (``fcntl.flock``; a no-op where
    unavailable). The lock dies with its process, so a killed holder never leaves it stale."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

"""The package's JSON reader, atomic writer and staging folder: every write is atomic (a
temporary file ``os.replace``d, or a staged folder moved in), with ``0o666 & ~umask`` modes."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError, WriteFaultError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def one_line(reason: object) -> str:
    """``str(reason)`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(reason).split())


@contextmanager
def read_faults(
    path: Path, what: str, error: type[GatedPluginError] = GatedPluginError
) -> Iterator[None]:
    """Turn an ``OSError`` from reading ``path`` into ``error``: one line naming file and fault."""
    try:
        yield
    except FileNotFoundError:
        dangling = " (a dangling symlink)" if path.is_symlink() else ""
        raise error(f"{path}: file not found{dangling}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def require_file(
    path: Path | str, *, what: str = "file", error: type[GatedPluginError] = GatedPluginError
) -> None:
    """Open ``path`` for reading and close it: a read fault raises ``error`` naming the file."""
    path = Path(path)
    with read_faults(path, what, error), open(path, "rb"):
        pass


def read_text(
    path: Path | str, *, what: str = "file", error: type[GatedPluginError] = GatedPluginError
) -> str:
    """The UTF-8 text of ``path``; any read fault (missing, a folder, a dangling symlink or
    loop, unreadable, not UTF-8) raises ``error`` with one line naming the file and the fault."""
    path = Path(path)
    with read_faults(path, what, error):
        data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: {what} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start})"
        ) from None


def read_json(
    path: Path, *, error: type[GatedPluginError] = GatedPluginError, expect_object: bool = True
) -> Any:
    """Parse a JSON file; a missing, unreadable or invalid file (or with ``expect_object``, a
    non-object) raises ``error`` naming it."""
    text = read_text(path, what="JSON file", error=error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
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
    """Write ``data`` to ``path`` atomically (parents created, ``0o666 & ~umask`` mode)."""
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
    """Give every file under ``folder`` ``0o666 & ~umask`` (safetensors writes private 0600)."""
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
    """``path`` cleared of any earlier attempt, and of whatever is still there on exit."""
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process ``fcntl.flock`` on ``path``, waited for (dies with its process)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def folder_written_whole(target: Path) -> Iterator[Path]:
    """A staging folder beside ``target`` to write into; on success it replaces ``target`` (an
    earlier one is moved aside first and removed after), on failure it is removed and ``target``
    is left as it was."""
    with staging_folder(target.parent / f".{target.name}.partial") as staging:
        staging.mkdir(parents=True)
        yield staging
        aside = target.parent / f".{target.name}.replaced"
        shutil.rmtree(aside, ignore_errors=True)
        if target.is_dir():
            os.replace(target, aside)
        os.replace(staging, target)
        shutil.rmtree(aside, ignore_errors=True)


# ---- write faults: the machine refused a write --------------------------------------------
WRITE_FAULT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG}
)
"""The errnos of a write the machine refused (not a bug of the plugin or of its input)."""
_FAULT_TEXTS = {os.strerror(code): code for code in WRITE_FAULT_ERRNOS}
# Writers that report the OS error only in their message (safetensors, pyarrow, torch.save).
_FAULT_TEXTS.update({"StorageFull": errno.ENOSPC, "ReadOnlyFilesystem": errno.EROFS})


def write_fault_cause(exc: BaseException, where: Path | None = None) -> str | None:
    """The cause (``os.strerror`` text, e.g. "No space left on device") when ``exc`` is a write
    the machine refused, else None. ``where``: a folder to probe for free space when the writer
    says only that the write failed (``torch.save``)."""
    if isinstance(exc, OSError) and exc.errno in WRITE_FAULT_ERRNOS:
        return os.strerror(exc.errno)
    if not isinstance(exc, (OSError, RuntimeError, ValueError)) and type(exc).__name__ not in (
        "SafetensorError",
    ):
        return None
    text = str(exc)
    for needle, code in _FAULT_TEXTS.items():
        if needle in text:
            return os.strerror(code)
    if where is not None and "write failed" in text:
        with contextlib.suppress(OSError):
            stats = os.statvfs(where)
            if stats.f_bavail * stats.f_frsize < 64 * 1024:
                return os.strerror(errno.ENOSPC)
            if stats.f_flag & os.ST_RDONLY:
                return os.strerror(errno.EROFS)
    return None


@contextmanager
def write_faults(target: Path | str, intact: str) -> Iterator[None]:
    """Turn a write fault raised inside into ``WriteFaultError``: "cannot write ``target``
    (cause); ``intact``" (say there what is left complete, e.g. "nothing was written")."""
    try:
        yield
    except (WriteFaultError, GatedPluginError):
        raise
    except Exception as exc:
        folder = Path(target) if Path(target).is_dir() else Path(target).parent
        cause = write_fault_cause(exc, folder if folder.exists() else None)
        if cause is None:
            raise
        raise write_fault(target, cause, intact) from exc


def write_fault(target: Path | str, cause: str, intact: str) -> WriteFaultError:
    """The ``WriteFaultError`` "cannot write ``target`` (``cause``); ``intact``"; its ``cause``
    attribute keeps the cause for a caller that says it again for a folder of its own."""
    error = WriteFaultError(f"cannot write {target} ({cause}); {intact}")
    error.cause = cause
    return error


def unchanged_or_nothing(target: Path | str) -> str:
    """What an atomic write of ``target`` that failed leaves: the earlier file, or nothing."""
    if Path(target).exists():
        return f"the earlier {Path(target).name} is unchanged"
    return "nothing was written"

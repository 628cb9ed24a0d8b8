"""Exceptions the plugin raises for bad input, so callers (and the CLI) can tell them apart."""

from __future__ import annotations


class GatedPluginError(ValueError):
    """Invalid input: a config, file, argument or download. The message names what is wrong.

    Subclasses ``ValueError`` so generic ``except ValueError`` code keeps working; the
    ``sae-gated`` CLI turns it into exit status 2 with the message and no traceback.
    """


class MissingOptionalPackageError(GatedPluginError, ImportError):
    """An optional package (embedded model, corpus, ...) is not installed; says what to install."""


class CorruptArtifactError(GatedPluginError):
    """A saved or downloaded SAE file is corrupted or does not match its config."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; nothing after the last good checkpoint is saved."""


class TrainingInterruptedError(RuntimeError):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint it can resume from."""


class DistributedTrainingError(RuntimeError):
    """A rank of a torchrun launch failed, or lost a peer that failed (a collective raised or
    timed out); the message names the rank, the cause and the last complete checkpoint."""


class WriteFaultError(OSError):
    """A write failed for a reason of the machine (disk full, read-only, no permission, I/O
    error). The message is one line: the file or folder, the cause, and what is intact. Stays an
    ``OSError`` so ``except OSError`` code keeps working; the CLI exits 1 with the message."""

    cause: str = ""  # e.g. "No space left on device"

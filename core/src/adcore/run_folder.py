"""A run's output folder: complete or absent, one writer at a time, checked before any work.

Everything a command writes goes into a staging folder beside the output; only when the
run has written all of it does the staging folder replace the output folder, in two
renames. A crash, a kill or a full disk before that leaves the previous run as it was
(a kill between the two renames leaves the previous run under ``.NAME.old-*``, which the
next command on that folder puts back before anything else). A second command writing to the same folder
at the same time is refused (an advisory lock on ``.NAME.lock`` beside it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

#: Refuse to start a run with less free space than this where its output goes.
MIN_FREE_BYTES = 200 * 1024**2


class RunFolderError(OSError):
    """The output folder cannot take this run (not writable, in use, no space)."""


class RunFolder:
    """``with RunFolder(output) as staging: write into staging`` — swapped in on success only."""

    def __init__(self, output: str | os.PathLike, min_free_bytes: int = MIN_FREE_BYTES) -> None:
        self.output = Path(output)
        self.min_free_bytes = min_free_bytes
        self.parent = self.output.parent if str(self.output.parent) else Path(".")
        self.staging = self.parent / f".{self.output.name}.staging-{os.getpid()}"
        self._lock_file = self.parent / f".{self.output.name}.lock"
        self._lock: int | None = None

    def check(self) -> None:
        """Fail now, before any fitting, if this run could not be written."""
        if self.output.exists() and not self.output.is_dir():
            raise RunFolderError(f"{self.output}: exists and is not a folder")
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{self.parent}: cannot create the output's parent folder ({exc.strerror})") from None
        if not os.access(self.parent, os.W_OK | os.X_OK):
            raise RunFolderError(f"{self.parent}: not writable, cannot write the run {self.output.name}")
        if self.output.exists() and not os.access(self.output, os.W_OK | os.X_OK):
            raise RunFolderError(f"{self.output}: not writable")
        free = shutil.disk_usage(self.parent).free
        if free < self.min_free_bytes:
            raise RunFolderError(
                f"{self.parent}: only {free / 1024**2:.0f} MB free, a run needs at least "
                f"{self.min_free_bytes / 1024**2:.0f} MB"
            )

    def __enter__(self) -> Path:
        self.check()
        self._lock = os.open(self._lock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            self._lock = None
            raise RunFolderError(f"{self.output}: another adcore command is writing this folder; wait for it") from None
        self._remove_leftovers()
        self.staging.mkdir()
        return self.staging

    def _remove_leftovers(self) -> None:
        """Staging and old folders of runs that were killed (we hold the lock: none is live).

        A run killed between its two renames left no output and the previous run under
        ``.NAME.old-*``: that previous run is put back first.
        """
        olds = sorted(self.parent.glob(f".{self.output.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and not self.output.exists():
            os.rename(olds.pop(), self.output)
        for leftover in [*olds, *self.parent.glob(f".{self.output.name}.staging-*")]:
            shutil.rmtree(leftover, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
            else:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            if self._lock is not None:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                os.close(self._lock)
                self._lock = None

    def _commit(self) -> None:
        old = self.parent / f".{self.output.name}.old-{os.getpid()}"
        try:
            if self.output.exists():
                os.rename(self.output, old)
            os.rename(self.staging, self.output)
        except OSError as exc:
            if old.exists() and not self.output.exists():
                os.rename(old, self.output)  # put the previous run back
            shutil.rmtree(self.staging, ignore_errors=True)
            raise RunFolderError(f"{self.output}: cannot move the finished run into place ({exc.strerror})") from None
        shutil.rmtree(old, ignore_errors=True)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)

"""File-system helpers: atomic writes with restrictive permissions."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from certmgr.errors import StorageError


@contextlib.contextmanager
def atomic_stream(path: Path, mode: int = 0o600, *, what: str | None = None) -> Iterator[BinaryIO]:
    """Stream a file into ``path`` atomically: the block writes to a temp file in the same folder (``mode`` from
    the start), which is fsynced and renamed over ``path`` when the block ends, and removed if it raises. Readers
    see either the old file or the complete new one, never a half-written one.

    Raises:
        StorageError: if the folder or the file cannot be written (``what`` names it in the message; default the
            path). Whatever the block raises otherwise, after the temp file is removed.
    """
    folder = path.parent
    shown = what or str(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise StorageError(f"cannot write {shown}: {exc.strerror or exc}", path=str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot write {shown}: {exc.strerror or exc}", path=str(path)) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_stream`).

    Raises:
        StorageError: if the folder cannot be created or written.
    """
    with atomic_stream(path, mode) as fh:
        fh.write(data)


def atomic_write_many(files: dict[Path, bytes], mode: int = 0o600) -> None:
    """Write several files so that either all of them are replaced or none.

    Every file is first written to a temp file; only when all temp files exist are they renamed into place.

    Raises:
        StorageError: if any of the files cannot be written (no target file is changed then).
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
        for folder in {p.parent for _, p in staged}:
            fsync_dir(folder)
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise StorageError(f"cannot write {exc.filename or 'file'}: {exc.strerror or exc}") from exc


def claim_slot(folder: Path, prefix: str, limit: int = 64) -> tuple[int, int]:
    """The lowest slot number ``n`` whose lock file ``<folder>/<prefix>-<n>.lock`` no other process holds, locked for
    the life of this process (or until the returned file descriptor is closed): ``(n, fd)``. A process that dies
    releases its slot with its last file descriptor, so a restarted process gets the same number back.

    Raises:
        StorageError: if the folder is unwritable or all ``limit`` slots are taken.
    """
    import fcntl

    ensure_private_dir(folder)
    for n in range(limit):
        path = folder / f"{prefix}-{n}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return n, fd
    raise StorageError(f"all {limit} {prefix} slots in {folder} are taken")


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if needed and check that it is writable.

    Raises:
        StorageError: if it cannot be created or is not writable.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create data dir {path}: {exc.strerror or exc}", path=str(path)) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(f"data dir {path} is not writable", path=str(path))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (fsync of the directory; best effort, errors ignored)."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

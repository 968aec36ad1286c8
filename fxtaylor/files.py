"""Atomic file writes: readers (and a run restarted after a crash) see the old file or the new
one, whole, never half of one."""
from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from .errors import FxTaylorError, WriteError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; leftovers are recognised by their age instead
    fcntl = None

LEFTOVER_AGE_S = 600  # without locks: a temporary file this old belongs to a dead writer


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, whole.

    The temp file lives in the same directory because ``os.replace`` is atomic only within one
    filesystem; fsync before the rename, or a crash can leave the new name on empty blocks.
    The writer holds a lock on its temporary file until the rename, so the temporary files a
    killed writer left (``SIGKILL`` mid-write: nothing can clean up) are told apart from live
    ones and removed by the next write of the same file (:func:`remove_leftovers`). A failure
    is a :class:`~fxtaylor.errors.WriteError` naming the file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            _lock(f.fileno())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:
                os.replace(tmp, path)  # still locked: a cleaner never takes a live temporary file
        if fcntl is None:
            os.replace(tmp, path)  # Windows cannot rename an open file
    except BaseException as e:
        # Also on KeyboardInterrupt: a stray .tmp would sit in the run directory forever.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, FxTaylorError):
            raise _write_error(path, e) from e
        raise
    _fsync_dir(path.parent)
    remove_leftovers(path.parent, path.name)


def _write_error(path: Path, e: OSError) -> WriteError:
    return WriteError(f"cannot write {path}: {e.strerror or e}")


def _lock(fd: int) -> None:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a filesystem without locks: leftovers are then never taken for live ones
            pass


def remove_leftovers(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files that writers of ``directory/name`` (every file when None)
    killed mid-write left behind; a temporary file whose writer is alive (it holds its lock)
    is kept. Returns the removed paths."""
    directory = Path(directory)
    pattern = re.compile(rf"\.{re.escape(name) if name else '.+'}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        candidates = [p for p in directory.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return removed
    for p in candidates:
        try:
            if fcntl is None:
                if time.time() - p.stat().st_mtime > LEFTOVER_AGE_S:
                    p.unlink()
                    removed.append(p)
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
                p.unlink()
                removed.append(p)
            finally:
                os.close(fd)
        except OSError:
            continue
    return removed


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line :class:`FxTaylorError` unless ``path`` is a directory that can be
    written, or can be created as one. Creates nothing (a probe file is made and removed in the
    nearest folder that exists)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise FxTaylorError(f"{what} must be a directory path (str or os.PathLike), got {type(path).__name__} {path!r:.60}")
    path = Path(path)
    here = path
    try:
        while not here.exists() and not here.is_symlink() and here.parent != here:
            here = here.parent
        is_dir = here.is_dir()
    except OSError as e:
        raise FxTaylorError(f"{what} {path} cannot be used: {e.strerror or e} ({here})") from None
    if not is_dir:
        if here == path:
            raise FxTaylorError(f"{what} {path} is a file, not a directory: pass a directory (a new or an existing one)")
        raise FxTaylorError(f"{what} {path} cannot be created: {here} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=here, prefix=".fxtaylor-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if here == path else f" (in {here}, where it would be created)"
        raise FxTaylorError(f"{what} {path} is not writable{where}: {e.strerror or e}; pass a directory you can write to") from None


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

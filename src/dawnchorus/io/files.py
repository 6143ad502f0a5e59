"""Files on disk: the one atomic write, clean-up of the temporaries it leaves, output folders, and
usable CPU cores.

Every file the package writes (prediction parts and outputs, the model file, the ONNX graph, the
report page, the decoded-audio cache) goes through :func:`atomic_write`, so there is one temporary
naming scheme and :func:`remove_stale_temporaries` recognises every temporary a killed process can
leave behind. An output that cannot be written (a full disk, no permission, a file where a folder
belongs) is one :class:`~dawnchorus.errors.OutputError` naming the path and the reason
(:func:`output_error`); :func:`output_folder` checks and creates a run's folder before anything is
written into it. This module does not know any file format (writers live beside their formats:
``io/outputs.py``, ``models/modelfile.py``, ...) and imports no torch.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from dawnchorus.errors import OutputError

# Temporary names: ".<name>.<12 hex digits>.tmp<suffix of name>", beside the target. The random
# part keeps concurrent writers (DataLoader workers, Dask tasks) apart; the kept suffix lets writers
# that choose a format by suffix (pandas, numpy, onnx) still do so.
_TOKEN_DIGITS = 12
_TEMPORARY = re.compile(rf"\..+\.[0-9a-f]{{{_TOKEN_DIGITS}}}\.tmp(\.[^./]+)?")


def atomic_write(path: str | Path, write_fn: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write_fn(tmp_path)``, then move the result into place atomically.

    The temporary file lives in the same folder (so ``os.replace`` is atomic) and keeps the
    suffix of ``path`` (writers that pick a format by suffix still work). ``write_fn`` gets a path:
    ``DataFrame.to_parquet``, ``onnx.save`` take it as it is; a writer that needs a file object
    opens it (``with open(tmp, "wb") as handle: ...``). If ``write_fn`` raises, the temporary file
    is removed, any existing ``path`` is left untouched, and the error propagates; an ``OSError``
    (a full disk, no permission, a file where a folder belongs) becomes an :class:`OutputError`
    naming ``path`` and the reason (:func:`output_error`). If ``write_fn`` returns without creating
    the file, :class:`OutputError` is raised. Returns ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: cannot write this file: a folder of that name exists")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:_TOKEN_DIGITS]}.tmp{path.suffix}")
    try:
        write_fn(tmp)
        if not tmp.exists():
            raise OutputError(f"{path}: the writer returned without creating a file")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def is_temporary(name: str) -> bool:
    """Whether a file name is one :func:`atomic_write` gives its temporaries."""
    return _TEMPORARY.fullmatch(name) is not None


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files a killed :func:`atomic_write` left in ``folder``; returns how many.

    Only names of :func:`is_temporary` are touched, never a finished file. Call it before a run
    starts writing into ``folder``, never while another writer is active.
    """
    removed = 0
    for stale in Path(folder).glob(".*.tmp*"):
        if is_temporary(stale.name) and stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def output_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create folder ``path`` for outputs (with its parents) and check that files can be written in it.

    Call it before a run writes anything: an existing file of that name, a parent that is a file, a
    folder that cannot be created or written in, is one :class:`OutputError` naming ``path`` (``what``
    says what the folder is for). Returns ``path``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: cannot be the {what}: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc, f"create the {what}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise output_error(path, PermissionError(errno.EACCES, "Permission denied"), f"write in the {what}")
    return path


# Reasons for the errors writing can run into, as a user reads them.
_WRITE_PROBLEMS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "a folder of that name exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EFBIG: "the file is too large for the file system",
}


def output_error(path: str | Path, exc: OSError, action: str = "write this file") -> OutputError:
    """The :class:`OutputError` for ``exc``, raised while writing ``path``: ``PATH: cannot ACTION: REASON``.

    A full disk, a missing permission or a read-only file system is said in words; a file where a
    folder belongs is named.
    """
    path = Path(path)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return OutputError(f"{path}: cannot {action}: {blocking} is a file, not a folder")
    reason = _WRITE_PROBLEMS.get(exc.errno) if exc.errno is not None else None
    if reason is None:
        reason = (exc.strerror or str(exc) or type(exc).__name__).strip()
    return OutputError(f"{path}: cannot {action}: {reason}")


def usable_cores() -> int:
    """CPU cores this process may run on (respects ``taskset``, cpusets and SLURM pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)

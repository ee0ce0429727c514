"""Writing files so that nothing already written is lost: a full disk, checksums, a busy run folder.

- ``guard_write(target, *cleanup)``: a full disk while writing (``OSError`` ENOSPC/EDQUOT, or the
  ``SafetensorError`` / torch ``RuntimeError`` that wrap it) becomes one ``DiskFullError`` naming
  ``target`` and "no space left on device"; the temporary paths in ``cleanup`` are removed first.
- ``torch_save(obj, path)``: ``torch.save`` that reports the ``OSError`` behind a failed write
  (torch itself only says ``unexpected pos N vs M``).
- ``sha256_file`` / ``file_checksums``: what a checkpoint records at save and verifies at load.
- ``RunLock``: an exclusive ``flock`` on ``RUN/.lock`` held while a run writes to its folder; a
  second process gets "RUN is in use by process N".
- ``file_mode()`` / ``follow_umask(path)`` / ``save_safetensors``: new files get
  ``0o666 & ~umask`` (``mkstemp`` and ``safetensors`` would leave ``0600``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")
LOCK_NAME = ".lock"


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; the message names the path."""


class RunInUseError(ValueError):
    """Another process holds the run folder's lock."""


def is_no_space(exc: BaseException) -> bool:
    """True for an exception caused by a full disk (directly or wrapped by torch/safetensors)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        if any(t in str(exc).lower() for t in _NO_SPACE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def remove(path: Path) -> None:
    """Remove a file or folder if it exists (never raises)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _free(path: Path) -> str:
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free"
    return "free space unknown"


@contextlib.contextmanager
def guard_write(target: str | Path, *cleanup: str | Path, hint: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into one ``DiskFullError`` naming ``target``.

    Args:
        target: what was being written (named in the message).
        cleanup: temporary files/folders removed on any failure inside the block.
        hint: appended to the message (e.g. which checkpoint is still intact).
    """
    try:
        yield
    except BaseException as e:
        for c in cleanup:
            remove(Path(c))
        if is_no_space(e):
            target = Path(target)
            msg = f"{target}: no space left on device ({_free(target)} after clean-up)"
            msg += f"; {hint}" if hint else "; free some space (or write elsewhere) and run again"
            err = DiskFullError(msg)  # str() is the message alone (no "[Errno 28]" prefix)
            err.errno = errno.ENOSPC
            raise err from None
        raise


class _RecordingWriter(io.RawIOBase):
    """A file wrapper that keeps the ``OSError`` of a failed write (torch hides it)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``; a failed write raises the underlying ``OSError`` (ENOSPC, ...)."""
    import torch

    with open(path, "wb") as f:
        w = _RecordingWriter(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None
            raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_checksums(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the plain files in ``folder`` and its subfolders (sorted)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def file_mode() -> int:
    """The mode the umask gives a new file (``0o666 & ~umask``)."""
    try:  # Linux: read without touching the process umask
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(path: str | Path) -> None:
    """Give a file written through ``mkstemp`` (mode 0600) the umask's mode."""
    os.chmod(path, file_mode())


def save_safetensors(
    tensors: dict[str, Any], path: str | Path, metadata: dict | None = None
) -> None:
    """``safetensors.torch.save_file`` with the umask's file mode (it writes 0600 itself)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    follow_umask(path)


class RunLock:
    """An exclusive, non-blocking lock on ``run_dir/.lock`` (``fcntl.flock``; released on close or
    process exit, so a killed run never leaves a stale lock). The file holds the owner's pid.

    A second ``RunLock`` on the same folder in the same process is allowed (a library caller that
    still holds a finished run's frame); another process gets ``RunInUseError``.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if owner == str(os.getpid()):
                return
            raise RunInUseError(
                f"{self.run_dir} is in use by process {owner or '?'}; wait for it to finish or "
                "stop it, or set train.out_dir to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_run_free(run_dir: str | Path) -> None:
    """Raise ``RunInUseError`` if another process holds ``run_dir``'s lock (checks, holds nothing)."""
    if (Path(run_dir) / LOCK_NAME).is_file():
        RunLock(run_dir).release()


__all__ = [
    "DiskFullError",
    "RunInUseError",
    "RunLock",
    "check_run_free",
    "file_checksums",
    "file_mode",
    "follow_umask",
    "guard_write",
    "is_no_space",
    "remove",
    "save_safetensors",
    "sha256_file",
    "torch_save",
]

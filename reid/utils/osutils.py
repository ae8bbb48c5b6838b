"""File-system helpers: folder creation and atomic writes.

Every file the project writes goes through :func:`atomic_write`, so an interrupted process leaves
either the previous file or the complete new one, never a truncated file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, os.PathLike]
# errno values of a write that failed because of the disk, not because of the data.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def mkdir_if_missing(path: PathLike) -> None:
    """Create ``path`` (and its parents) if it does not exist."""
    os.makedirs(path, exist_ok=True)


def _new_file_mode(path: Path) -> int:
    """Permissions for a file written over ``path``: the existing file's, else the umask's default.

    (``tempfile.mkstemp`` creates its files with mode 0600, which the rename would keep.)
    """
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:  # Linux: reads it without changing it
            umask = next((int(line.split()[1], 8) for line in f if line.startswith("Umask:")), None)
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield the name of a temporary file next to ``path``; when the block succeeds, fsync the
    file and rename it over ``path``. For libraries that take a file name (h5py, exporters).

    The new file gets the permissions of the file it replaces, or those the umask gives a new file.

    Raises:
        reid.errors.WriteError: the folder cannot hold the file, or the disk is full or read-only
            (an OSError with such an errno in the block, or any in the fsync / rename); ``path``
            keeps its previous content and no temporary file is left. A library's own write
            errors without an errno are the caller's to translate (see :func:`saving_to`).
    """
    from reid.errors import WriteError

    path = Path(path)
    try:
        mkdir_if_missing(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot create the file ({e.strerror or e})") from None
    with contextlib.suppress(OSError):
        os.fchmod(fd, _new_file_mode(path))
    os.close(fd)
    finished = False
    try:
        yield tmp
        finished = True
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # Our own fsync/rename failed, or the block's write hit a full or read-only disk.
        if isinstance(e, OSError) and (finished or e.errno in _WRITE_ERRNOS):
            raise WriteError(f"{path}: could not write ({e.strerror or e}); the previous file, if any, "
                             "is unchanged") from None
        raise


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    Args:
        path: the final file name.
        mode: ``'wb'`` for bytes or ``'w'`` for text (UTF-8).

    Raises:
        reid.errors.WriteError: as :func:`atomic_path`.
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f


@contextlib.contextmanager
def saving_to(path: PathLike) -> Iterator[None]:
    """Around a library's save call (``torch.jit.save``, h5py, ...): its I/O failure (an OSError,
    or the RuntimeError PyTorch's file writer raises) becomes one WriteError line naming ``path``."""
    from reid.errors import WriteError, first_line

    try:
        yield
    except (OSError, RuntimeError) as e:
        reason = getattr(e, "strerror", None) or first_line(e)
        raise WriteError(f"{path}: could not write ({reason}); the previous file, if any, is unchanged") from None


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=(",", ": ")) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`reid.errors.DatasetError`."""
    from reid.errors import DatasetError

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise DatasetError(f"{path}: not valid JSON ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise DatasetError(f"{path}: unreadable ({e.strerror or e})") from None


@contextlib.contextmanager
def folder_lock(folder: PathLike, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    The lock is an advisory ``flock`` on the folder itself: no file is created, and the operating
    system releases it when the process ends, however it ends (``kill -9`` included). Where
    ``fcntl`` is not available the block runs without a lock.

    Raises:
        reid.errors.ConfigError: another process holds the lock (another run uses the folder).
        reid.errors.WriteError: the folder cannot be created.
    """
    from reid.errors import ConfigError, WriteError

    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise WriteError(f"{folder}: cannot create the {what} folder ({e.strerror or e})") from None
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{folder}: another {what} is using this folder right now; wait for it to "
                                  "end or choose another folder") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

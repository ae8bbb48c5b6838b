"""File-system helpers: folder creation and atomic writes.

Every file the project writes goes through :func:`atomic_write`, so an interrupted process leaves
either the previous file or the complete new one, never a truncated file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, os.PathLike]
# errno values of a write that failed because of the disk, not because of the data.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def mkdir_if_missing(path: PathLike) -> None:
    """Create ``path`` (and its parents) if it does not exist."""
    os.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    Args:
        path: the final file name.
        mode: ``'wb'`` for bytes or ``'w'`` for text (UTF-8).

    Raises:
        reid.errors.WriteError: the folder cannot hold the file, or the disk is full or read-only;
            ``path`` keeps its previous content and no temporary file is left.
    """
    from reid.errors import WriteError

    path = Path(path)
    try:
        mkdir_if_missing(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot create the file ({e.strerror or e})") from None
    written = False
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            written = True
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # Our own flush/fsync/rename failed, or the caller's write hit a full or read-only disk.
        if isinstance(e, OSError) and (written or e.errno in _WRITE_ERRNOS):
            raise WriteError(f"{path}: could not write ({e.strerror or e}); the previous file, if any, "
                             "is unchanged") from None
        raise


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

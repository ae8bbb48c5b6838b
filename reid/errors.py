"""Errors the project raises for bad input.

Every error a user can cause (a missing dataset, a malformed file, an unknown option value, a
checkpoint of the wrong network) is raised as a subclass of :class:`FDGANError` with a one-line
message that names the file or flag. The command-line entry points catch :class:`FDGANError` and
print ``error: <message>`` instead of a traceback.
"""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty), for
    one-line errors built from a library's multi-line ones."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class FDGANError(Exception):
    """Base class of every error caused by user input."""

    def __init__(self, *args: object) -> None:
        # A DataLoader worker's error is re-raised in the main process as this class built from
        # "Caught X in DataLoader worker process N.\nOriginal Traceback ...\n<module>.X: <message>";
        # keep the one-line message so that the CLIs still print one line.
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "\nOriginal Traceback" in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
            if last.startswith(prefix):
                args = (last[len(prefix):],)
        super().__init__(*args)


class DatasetError(FDGANError):
    """A dataset folder, image, pose file, meta.json or splits.json is missing or malformed."""


class CheckpointError(FDGANError):
    """A checkpoint file is missing, unreadable, unsafe or belongs to another network."""


class ConfigError(FDGANError):
    """An option value or argument combination is invalid."""


class WriteError(FDGANError):
    """An output file could not be written (disk full, no permission); the previous file is kept."""


class NonFiniteLossError(FDGANError):
    """A training loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class NonFiniteError(FDGANError):
    """A network gave NaN or infinite features or gradients (diverged weights, or mixed precision
    out of range)."""

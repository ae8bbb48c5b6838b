"""Errors the project raises for bad input.

Every error a user can cause (a missing dataset, a malformed file, an unknown option value, a
checkpoint of the wrong network) is raised as a subclass of :class:`FDGANError` with a one-line
message that names the file or flag. The command-line entry points catch :class:`FDGANError` and
print ``error: <message>`` instead of a traceback.
"""


class FDGANError(Exception):
    """Base class of every error caused by user input."""


class DatasetError(FDGANError):
    """A dataset folder, image, pose file, meta.json or splits.json is missing or malformed."""


class CheckpointError(FDGANError):
    """A checkpoint file is missing, unreadable, unsafe or belongs to another network."""


class ConfigError(FDGANError):
    """An option value or argument combination is invalid."""

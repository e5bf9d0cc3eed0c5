"""User-facing error types.

Anything a user can cause (a bad file, a wrong option, an unknown config key) raises a subclass of
:class:`MedvitError`. The CLI turns these into one line on stderr and a non-zero exit code, without a
traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedvitError(Exception):
    """Base class of errors caused by user input; the message is shown as-is."""

    exit_code: int = 2


class ConfigError(MedvitError):
    """Unknown config key, wrong type, malformed ``--set`` or YAML."""


class WeightsError(MedvitError):
    """A checkpoint that cannot be read, converted or loaded into the requested model."""


class DataError(MedvitError):
    """An input file or folder that cannot be read (missing, corrupt, wrong shape, NaN, ...)."""


class TrainingError(MedvitError):
    """Training cannot continue (non-finite loss, nothing to resume from, ...)."""

"""Exceptions that Parley's voice layer raises at its public boundaries.

Every message is written for the person running Parley: it says what is wrong and, where there
is one, the command that fixes it. The CLI prints ``str(err)`` and exits non-zero; it never
shows a traceback for these.
"""


class ParleyError(Exception):
    """Base class of every error Parley reports to a user."""


class ModelError(ParleyError):
    """A model could not be found, verified or prepared."""


class ModelMissing(ModelError):
    """The pip package that carries a model is not installed (or has the wrong version)."""


class ModelCorrupt(ModelError):
    """A model file does not match its pinned sha256."""


class AudioInputError(ParleyError):
    """Audio that Parley cannot use: not audio, empty, wrong format or rate."""

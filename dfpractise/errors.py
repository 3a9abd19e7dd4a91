"""User-facing errors.

Anything raised as a ``DFPractiseError`` is a user mistake or an unmet condition the user can fix
(bad path, unknown model, unreachable target). The CLI prints its message on one line and exits
non-zero; everything else is a bug and keeps its traceback.
"""


class DFPractiseError(Exception):
    """Base class of every error whose message is meant for the user."""


class ConfigError(DFPractiseError):
    """A recipe or option has a value outside what the method accepts."""


class ModelError(DFPractiseError):
    """Unknown architecture, or weights that cannot be found or do not fit."""


class DataError(DFPractiseError):
    """A data folder is missing, empty, unreadable or too small."""


class TargetError(DFPractiseError):
    """A latency target cannot be met by dropping the available blocks."""


class SynthesisError(DFPractiseError):
    """Image synthesis cannot go on (its loss diverged, or its inputs cannot drive it)."""

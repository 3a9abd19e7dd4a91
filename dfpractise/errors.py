"""User-facing errors.

Anything raised as a ``DFPractiseError`` is a user mistake or an unmet condition the user can fix
(bad path, unknown model, unreachable target). The CLI prints its message on one line and exits
non-zero; everything else is a bug and keeps its traceback.

The ``synthesizers`` package stands alone and raises its own errors of the same names;
``synthesizer_errors`` turns them into these where this package calls it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


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


class DivergedError(DFPractiseError):
    """A training loss became NaN or infinite: the phase stopped and its last good state is kept."""


class SynthesisError(DFPractiseError):
    """Image synthesis cannot go on (its loss diverged, or its inputs cannot drive it)."""


@contextmanager
def synthesizer_errors() -> Iterator[None]:
    """Re-raise the ``synthesizers`` package's user errors as this package's, message unchanged."""
    from synthesizers import errors as theirs

    try:
        yield
    except theirs.SynthesizerError as err:
        ours = {theirs.ConfigError: ConfigError, theirs.DataError: DataError, theirs.SynthesisError: SynthesisError}
        kind = next((ours[c] for c in type(err).__mro__ if c in ours), DFPractiseError)
        converted = kind(str(err))
        if getattr(err, "all_ranks", False):  # raised alike on every rank of a shared synthesis
            converted.all_ranks = True  # type: ignore[attr-defined]
        raise converted from None

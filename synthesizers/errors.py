"""The errors this package raises for its user: bad settings, unusable inputs, failed synthesis.

The package stands alone (torch and kornia only), so it has its own small hierarchy. A program
built on it catches ``SynthesizerError`` and shows its message; anything else is a bug.
``dfpractise`` re-raises these as its own errors of the same name, message unchanged.
"""


class SynthesizerError(Exception):
    """Base class of every error whose message is meant for the user."""


class ConfigError(SynthesizerError):
    """A synthesizer setting, or a name, that cannot be used."""


class DataError(SynthesizerError):
    """An input that cannot be read: a cache folder made otherwise, a missing pipeline folder."""


class SynthesisError(SynthesizerError):
    """Synthesis cannot go on: its loss diverged, or a batch came out malformed."""

"""dfpractise: faster classifiers from few or no images, by dropping residual blocks (PRACTISE)."""

__version__ = "0.1.0"

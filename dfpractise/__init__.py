"""dfpractise: faster classifiers from few or no images, by dropping residual blocks (PRACTISE)."""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .engine import CompressionResult, compress  # noqa: E402
from .export import load  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = ["CompressionResult", "RunConfig", "compress", "create_model", "list_models", "load", "__version__"]

"""Model registry, architectures implementing the feature protocol, and weight loading.

Importing this package registers every built-in model.
"""

from dfpractise.models.registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)
from dfpractise.models import cifar_resnet, torchvision_models  # noqa: F401  (registers models)
from dfpractise.models.weights import (
    WeightSpec,
    get_weight_spec,
    list_weights,
    load_state_dict_file,
    load_weights,
    register_weights,
    resolve_weights,
    weights_sha256,
)

__all__ = [
    "ModelSpec",
    "WeightSpec",
    "create_model",
    "get_model_spec",
    "get_weight_spec",
    "list_models",
    "list_weights",
    "load_state_dict_file",
    "load_weights",
    "register_model",
    "register_weights",
    "resolve_weights",
    "weights_sha256",
]

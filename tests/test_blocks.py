"""Block discovery and dropping, over every registered architecture (timm's test style)."""

import pytest
import torch

from dfpractise.errors import ModelError
from dfpractise.models import create_model, list_models
from dfpractise.models.blocks import drop_blocks, find_blocks

from conftest import features_without

EXPECTED_CANDIDATES = {
    "cifar10_resnet20": 6,
    "cifar10_resnet32": 12,
    "cifar10_resnet44": 18,
    "cifar10_resnet56": 24,
    "cifar10_resnet110": 51,
    "resnet18": 4,
    "resnet34": 12,
    "resnet50": 12,
    "resnet101": 29,
    "resnet152": 46,
    "mobilenet_v2": 10,
}


def _probe_size(model) -> int:
    return 32 if model.model_spec.input_size <= 64 else 64


@pytest.mark.parametrize("name", list_models())
def test_every_model_drops_its_blocks(name):
    assert name in EXPECTED_CANDIDATES, f"add the expected block count of {name}"
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = _probe_size(model)
    blocks = find_blocks(model, size)
    assert len(blocks) == EXPECTED_CANDIDATES[name]
    assert [b.step for b in blocks] == sorted(b.step for b in blocks), "network order"
    dropped = [blocks[0].name, blocks[-1].name]
    pruned = drop_blocks(model, dropped, size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model.forward_head(features_without(model, dropped, x))
        out = pruned(x)
    assert out.shape == (2, model.model_spec.num_classes)
    torch.testing.assert_close(out, expected)
    names = {n for n, _ in pruned.named_modules()}
    assert not set(dropped) & names, "dropped blocks must be gone from the module tree"
    kept = {n for n, _ in model.named_modules() if not any(n == d or n.startswith(d + ".") for d in dropped)}
    assert names == kept, "other modules keep their names"
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_block_names_are_in_network_order_not_string_order():
    model = create_model("cifar10_resnet110")
    names = [b.name for b in find_blocks(model)]
    assert names.index("layer1.9") < names.index("layer1.10")
    assert names[0] == "layer1.1" and names[-1] == "layer3.17"


def test_first_block_of_each_stage_is_never_a_candidate():
    model = create_model("cifar10_resnet20")
    names = [b.name for b in find_blocks(model)]
    assert names == ["layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def test_dropping_a_block_whose_branch_is_zero_changes_nothing():
    """A post-ReLU BasicBlock computes relu(x + f(x)); with f = 0 it is the identity on its input."""
    torch.manual_seed(0)
    model = create_model("cifar10_resnet20").eval()
    block = model.layer2[1]
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    pruned = drop_blocks(model, ["layer2.1"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x))


def test_state_dict_of_pruned_model_loads_into_a_rebuilt_one():
    model = create_model("cifar10_resnet20")
    pruned = drop_blocks(model, ["layer1.2", "layer3.1"])
    rebuilt = drop_blocks(create_model("cifar10_resnet20"), ["layer1.2", "layer3.1"])
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    assert "layer1.2.conv1.weight" not in pruned.state_dict()
    assert "layer1.1.conv1.weight" in pruned.state_dict()


@pytest.mark.parametrize("bad", ["layer1.0", "layer2.0", "layer9.1", "conv1"])
def test_undroppable_block_is_a_clear_error(bad):
    model = create_model("cifar10_resnet20")
    with pytest.raises(ModelError, match="not a droppable block"):
        drop_blocks(model, [bad])

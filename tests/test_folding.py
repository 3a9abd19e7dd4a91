"""BatchNorm folding for inversion (synthesizers.folding): same function, same statistics, same loss."""

from __future__ import annotations

import torch
from torch import nn

import conftest
from synthesizers import BNInversion
from synthesizers.bn_stats import bn_statistics
from synthesizers.folding import fold_batchnorms


def teacher_with_statistics(seed: int = 0) -> nn.Module:
    """The shared tiny teacher with BatchNorm scales and shifts away from 1 and 0."""
    teacher = conftest.SmallBNNet(seed=seed)
    with torch.no_grad():
        for bn in (m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return teacher


def distances_and_gradient(model, folded, x):
    x = x.clone().requires_grad_(True)
    with bn_statistics(model, folded) as stats:
        logits = model(x)
        distances = torch.stack(stats.pop())
    distances.sum().backward()
    return logits.detach(), distances.detach(), x.grad


def test_the_folded_copy_computes_the_teachers_logits_statistics_and_gradients():
    teacher = teacher_with_statistics()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    copy = fold_batchnorms(teacher, torch.rand(2, 3, 16, 16))
    assert len(copy.folded) == 2 and copy.model is not teacher
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.model.modules())
    x = torch.rand(6, 3, 16, 16)
    logits, distances, grad = distances_and_gradient(teacher, None, x)
    folded_logits, folded_distances, folded_grad = distances_and_gradient(copy.model, copy.folded, x)
    assert torch.allclose(folded_logits, logits, atol=1e-5)
    assert torch.allclose(folded_distances, distances, rtol=1e-4)  # the same layers in the same order
    assert torch.allclose(folded_grad, grad, rtol=1e-3, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in teacher.modules()) == 2


def test_a_batchnorm_with_a_zero_scale_stays_and_is_still_measured():
    teacher = teacher_with_statistics()
    with torch.no_grad():
        teacher.features[4].weight[3] = 0.0  # the second BatchNorm: its input can't be read from its output
    copy = fold_batchnorms(teacher, torch.rand(2, 3, 16, 16))
    assert [f.batchnorm for f in copy.folded.values()] == [teacher.features[1]]
    x = torch.rand(6, 3, 16, 16)
    _, distances, _ = distances_and_gradient(teacher, None, x)
    _, folded_distances, _ = distances_and_gradient(copy.model, copy.folded, x)
    assert torch.allclose(folded_distances, distances, rtol=1e-4)


class SharedConvolution(nn.Module):
    """A convolution whose output goes to a BatchNorm and, unnormalised, to a skip as well: folding
    the BatchNorm into it would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
        self.eval()

    def forward(self, x):
        z = self.conv(x)
        return self.head((self.bn(z) + z).mean((2, 3)))


def test_a_copy_that_computes_something_else_is_given_up_for_the_teacher():
    teacher = SharedConvolution()
    copy = fold_batchnorms(teacher, torch.rand(2, 3, 8, 8))
    assert copy.model is teacher and copy.folded == {}


def test_a_folded_inversion_starts_from_the_same_loss_and_leaves_the_teacher_as_it_was():
    teacher = teacher_with_statistics()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    first = {}
    for fold in (False, True):
        calls = []
        synth = BNInversion(teacher, steps=3, warm_start=0.0, precision="fp32", fold_batchnorm=fold)
        synth.generate(torch.tensor([0, 1, 2]), 16, 0, lambda **f: calls.append(f))
        first[fold] = calls[0]
    assert abs(first[True]["bn"] / first[False]["bn"] - 1) < 1e-4
    assert abs(first[True]["loss"] / first[False]["loss"] - 1) < 1e-4
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert all(p.is_contiguous() for p in teacher.parameters())
    assert "fold_batchnorm" not in BNInversion(teacher).settings()  # rounding, not other images: same cache

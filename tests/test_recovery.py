"""Recovery: MiR lowers the feature error and keeps the head; BP needs labels; resume is exact."""

import pytest
import torch

from dfpractise.config import RecoveryConfig
from dfpractise.errors import ConfigError
from dfpractise.models import create_model
from dfpractise.models.blocks import drop_blocks
from dfpractise.recovery import recover

from conftest import interrupting_progress


def identity(x):
    return x


def normalize(x):
    return (x - 0.5) / 0.25


@pytest.fixture()
def pair(assets_dir):
    teacher = create_model("cifar10_resnet20", weights="cifar10jpeg-resnet20").eval()
    return teacher, drop_blocks(teacher, ["layer1.1", "layer2.1"])


@pytest.fixture(scope="module")
def images(assets_dir):
    from dfpractise.sources import RealFolderSource

    return RealFolderSource(assets_dir / "cifar10-jpeg" / "train").load(32, 32, seed=0).images


def _feature_error(student, teacher, images):
    with torch.no_grad():
        x = normalize(images)
        return torch.nn.functional.mse_loss(student.forward_features(x), teacher.forward_features(x)).item()


def test_mir_lowers_feature_error_and_keeps_the_teachers_head(pair, images):
    teacher, student = pair
    head = student.linear.weight.clone()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = _feature_error(student, teacher, images)
    result = recover(student, teacher, images, RecoveryConfig(iterations=30, batch_size=8, lr=0.01),
                     identity, normalize, seed=0)
    assert result.iterations == 30 and result.final_loss is not None
    assert _feature_error(student.eval(), teacher, images) < before
    assert torch.equal(student.linear.weight, head), "MiR must not touch the classifier"
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not student.training


def test_bp_without_labels_is_a_clear_error(pair, images):
    teacher, student = pair
    with pytest.raises(ConfigError, match="labelled"):
        recover(student, teacher, images, RecoveryConfig(method="bp", iterations=2), identity, normalize)


@pytest.mark.parametrize("method", ["bp", "kd"])
def test_other_recoveries_train(pair, images, method):
    teacher, student = pair
    labels = torch.randint(0, 10, (len(images),))
    before = student.linear.weight.clone()
    result = recover(student, teacher, images, RecoveryConfig(method=method, iterations=3, batch_size=8),
                     identity, normalize, labels=labels)
    assert result.method == method
    assert not torch.equal(student.linear.weight, before), f"{method} trains the head too"


def test_no_recovery_leaves_weights_alone(pair, images):
    teacher, student = pair
    state = {k: v.clone() for k, v in student.state_dict().items()}
    recover(student, teacher, images, RecoveryConfig(method="none"), identity, normalize)
    assert all(torch.equal(state[k], v) for k, v in student.state_dict().items())


def test_interrupted_recovery_resumes_to_the_same_weights(pair, images, tmp_path):
    teacher, student = pair
    resumed = drop_blocks(teacher, ["layer1.1", "layer2.1"])
    config = RecoveryConfig(iterations=12, batch_size=8, lr=0.01, checkpoint_every=100)
    from dfpractise.augment import train_augmentation

    augment = train_augmentation(32)
    recover(student, teacher, images, config, augment, normalize, seed=3)

    checkpoint = tmp_path / "recovery.ckpt"
    with pytest.raises(KeyboardInterrupt):
        recover(resumed, teacher, images, config, augment, normalize, seed=3,
                progress=interrupting_progress("Recovering", 5), checkpoint=checkpoint)
    assert checkpoint.exists()
    result = recover(resumed, teacher, images, config, augment, normalize, seed=3, checkpoint=checkpoint)
    assert result.resumed_from == 5
    for key, value in student.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)

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


def _interrupted_then_resumed(pair, images, tmp_path, config, augment, seed, stop_at):
    """One recovery run through, and the same recovery interrupted at step ``stop_at`` and resumed
    from its checkpoint: (uninterrupted student, resumed student, the resumed run's result)."""
    teacher, student = pair
    recover(student, teacher, images, config, augment, normalize, seed=seed)
    resumed = drop_blocks(teacher, ["layer1.1", "layer2.1"])
    checkpoint = tmp_path / "recovery.ckpt"
    with pytest.raises(KeyboardInterrupt):
        recover(resumed, teacher, images, config, augment, normalize, seed=seed,
                progress=interrupting_progress("Recovering", stop_at), checkpoint=checkpoint)
    assert checkpoint.exists()
    result = recover(resumed, teacher, images, config, augment, normalize, seed=seed, checkpoint=checkpoint)
    return student, resumed, result


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
    from dfpractise.augment import train_augmentation

    config = RecoveryConfig(iterations=12, batch_size=8, lr=0.01, checkpoint_every=100)
    student, resumed, result = _interrupted_then_resumed(pair, images, tmp_path, config, train_augmentation(32),
                                                         seed=3, stop_at=5)
    assert result.resumed_from == 5
    for key, value in student.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)


# --- speed settings, each against the plain path -------------------------------------------------

def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["mir", "mir-stages", "kd"])
def test_a_pool_of_one_unaugmented_view_trains_exactly_as_the_plain_loop(assets_dir, images, method):
    """With nothing random in the augmentation, drawing (view, image) from a one-view pool is the
    plain loop's draw of an image: the same batches and targets, so the same weights bit for bit."""
    teacher = create_model("cifar10_resnet20", weights="cifar10jpeg-resnet20").eval()
    plain, pooled = (drop_blocks(teacher, ["layer1.1"]) for _ in range(2))
    config = RecoveryConfig(method=method, iterations=4, batch_size=8, lr=0.01, teacher_views=0, mix="none")
    recover(plain, teacher, images, config, identity, normalize, seed=2)
    recover(pooled, teacher, images, config.replace(teacher_views=1), identity, normalize, seed=2)
    for key, value in plain.state_dict().items():
        assert torch.equal(pooled.state_dict()[key], value), key


def test_a_pool_augments_once_per_view_not_every_step(pair, images):
    teacher, student = pair
    calls = {"n": 0}
    from dfpractise.augment import train_augmentation

    augmentation = train_augmentation(32)

    def counting(x):
        calls["n"] += 1
        return augmentation(x)

    recover(student, teacher, images[:40], RecoveryConfig(iterations=10, batch_size=8, teacher_views=3),
            counting, normalize, seed=0)
    assert calls["n"] == 3, "three views of a 40-image set, augmented once each, then drawn from"
    calls["n"] = 0
    recover(drop_blocks(teacher, ["layer1.1"]), teacher, images[:40],
            RecoveryConfig(iterations=10, batch_size=8, teacher_views=0), counting, normalize, seed=0)
    assert calls["n"] == 10, "the plain loop augments every step"


def test_a_pooled_recovery_interrupted_and_resumed_ends_as_an_uninterrupted_one(pair, images, tmp_path):
    """The pool is drawn from the seed, so a resumed run rebuilds the same views."""
    from dfpractise.augment import train_augmentation

    config = RecoveryConfig(iterations=10, batch_size=8, lr=0.01, checkpoint_every=100, teacher_views=2)
    student, resumed, result = _interrupted_then_resumed(pair, images, tmp_path, config, train_augmentation(32),
                                                         seed=4, stop_at=4)
    assert result.resumed_from == 4
    for key, value in student.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_a_pool_too_large_for_memory_keeps_the_views_that_fit_or_none_if_too_few_and_says_so(pair, images, monkeypatch):
    import dfpractise.recovery as recovery
    from dfpractise.progress import Progress

    per_view = (3 * 32 * 32 + 64 * 8 * 8) * 4 * len(images)  # input and ResNet-20 features, float32
    monkeypatch.setattr(recovery, "POOL_BYTES_MAX", 10.5 * per_view)
    teacher, student = pair
    logged, augmented = [], {"n": 0}

    class Recording(Progress):
        def log(self, message):
            logged.append(message)

    def counting(x):
        augmented["n"] += 1
        return x

    recover(student, teacher, images, RecoveryConfig(method="mir", iterations=2, teacher_views=50), counting,
            normalize, progress=Recording(quiet=True))
    assert augmented["n"] == 10 * len(images.split(256)), "ten views fit, so ten are made"
    assert any("50 teacher views" in m and "keeping 10" in m for m in logged)
    monkeypatch.setattr(recovery, "POOL_BYTES_MAX", 3.5 * per_view)
    logged.clear()
    augmented["n"] = 0
    recover(drop_blocks(teacher, ["layer1.1"]), teacher, images,
            RecoveryConfig(method="mir", iterations=3, teacher_views=50), counting, normalize,
            progress=Recording(quiet=True))
    assert any("3 fit, too few to draw from for 3 steps: running the teacher every step" in m for m in logged)
    assert augmented["n"] == 1 + 3, "one probe view, then the plain loop augments every step"
    logged.clear()
    recover(drop_blocks(teacher, ["layer1.1"]), teacher, images,
            RecoveryConfig(method="mir", iterations=3, teacher_views=3), counting, normalize,
            progress=Recording(quiet=True))
    assert not logged, "three views asked for, three fit: a pool of what was asked"


def test_bf16_recovery_follows_the_fp32_one_within_bf16_rounding(pair, images):
    """bf16 autocast changes rounding, not the method: the same steps end near the same weights and
    loss (bf16 keeps 8 bits of mantissa; a tolerance of a few percent of the update)."""
    teacher, student = pair
    start = _weights(student)
    low = drop_blocks(teacher, ["layer1.1", "layer2.1"])
    config = RecoveryConfig(iterations=6, batch_size=16, lr=0.01)
    plain = recover(student, teacher, images, config, identity, normalize, seed=1)
    fast = recover(low, teacher, images, config, identity, normalize, seed=1, precision="bf16")
    assert (plain.precision, fast.precision) == ("fp32", "bf16")
    assert fast.final_loss == pytest.approx(plain.final_loss, rel=0.05)
    update = sum((student.state_dict()[k] - start[k]).float().norm() ** 2 for k in start) ** 0.5
    apart = sum((student.state_dict()[k] - low.state_dict()[k]).float().norm() ** 2 for k in start) ** 0.5
    assert 0 < apart < 0.1 * update, "bf16 rounds differently but must follow the fp32 path"


def test_auto_precision_is_bf16_only_where_the_hardware_is_native(monkeypatch):
    from dfpractise import precision

    assert precision.resolve("fp32", "cpu") is None
    assert precision.resolve("bf16", "cpu") is torch.bfloat16
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert precision.resolve("auto", "cpu") is None
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.resolve("auto", "cpu") is torch.bfloat16


# --- mixing (recovery.mix) -------------------------------------------------------------------------

@pytest.fixture()
def spy_method():
    """A MiR-like method that records what the teacher and the student were shown."""
    from dfpractise.recovery import RECOVERY_METHODS, RecoveryMethod, register_recovery

    seen = {"teacher": [], "student": []}

    def teacher_output(adapter, teacher, x, config):
        seen["teacher"].append(x.clone())
        return adapter.features(teacher, x).float()

    def loss(adapter, student, x, wanted, target, config):
        seen["student"].append(x.clone())
        return torch.nn.functional.mse_loss(adapter.features(student, x).float(), wanted)

    register_recovery("spy-mix", RecoveryMethod(loss, teacher_output, features_only=True))
    yield seen
    RECOVERY_METHODS.unregister("spy-mix")


@pytest.mark.parametrize("views", [0, 2])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_shows_teacher_and_student_the_same_blends(pair, images, spy_method, views, kind):
    """The blends are new images (not rows of the tiny set), and the teacher's targets are computed on
    exactly the blends the student trains on, in the pool and in the plain loop alike."""
    teacher, student = pair
    tiny = images[:16]
    config = RecoveryConfig(method="spy-mix", iterations=3, batch_size=8, mix=kind, teacher_views=views)
    recover(student, teacher, tiny, config, identity, normalize, seed=0)
    shown = torch.cat(spy_method["student"])
    targets = torch.cat(spy_method["teacher"])
    originals = normalize(tiny).flatten(1)
    blended = [not (row == originals).all(1).any() for row in shown.flatten(1)]
    assert sum(blended) > len(blended) // 2
    assert all((row == targets.flatten(1)).all(1).any() for row in shown.flatten(1)), \
        "every image the student saw had its teacher target computed on it"


def test_mixing_with_a_label_trained_recovery_is_refused(pair, images):
    teacher, student = pair
    with pytest.raises(ConfigError, match="recovery.mix mixup blends images, and BP recovery learns from their labels"):
        recover(student, teacher, images, RecoveryConfig(method="bp", mix="mixup", iterations=2), identity,
                normalize, labels=torch.zeros(len(images), dtype=torch.int64))


def test_auto_mix_blends_for_methods_that_learn_the_teacher_and_not_for_labels(pair, images):
    from dfpractise.recovery import mix_of

    assert [mix_of(RecoveryConfig(method=m)) for m in ("mir-stages", "mir", "kd", "bp", "none")] == \
        ["mixup", "mixup", "mixup", "none", "none"]
    assert mix_of(RecoveryConfig(method="mir", mix="cutmix")) == "cutmix"
    teacher, student = pair
    labels = torch.randint(0, 10, (len(images),))
    result = recover(student, teacher, images, RecoveryConfig(method="bp", iterations=2, batch_size=8), identity,
                     normalize, labels=labels)
    assert result.mix == "none", "the default mix never blocks a label-trained recovery"
    result = recover(student, teacher, images, RecoveryConfig(iterations=2, batch_size=8), identity, normalize)
    assert (result.method, result.mix) == ("mir-stages", "mixup")


def test_a_mixed_recovery_interrupted_and_resumed_ends_as_an_uninterrupted_one(pair, images, tmp_path):
    """Blends are drawn from torch's generator, whose state the checkpoint keeps (plain loop)."""
    config = RecoveryConfig(iterations=8, batch_size=8, lr=0.01, checkpoint_every=100, teacher_views=0, mix="mixup")
    student, resumed, result = _interrupted_then_resumed(pair, images, tmp_path, config, identity, seed=5, stop_at=3)
    assert result.resumed_from == 3
    for key, value in student.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


# --- mimicking every stage (mir-stages) --------------------------------------------------------------

def test_stage_features_are_each_stages_output_then_the_feature_map(pair):
    from dfpractise.models.adapter import adapter_for

    teacher, student = pair
    adapter = adapter_for(teacher)
    assert adapter.stage_ends == ["layer2.0", "layer3.0"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = torch.relu(teacher.bn1(teacher.conv1(x)))
        first = teacher.layer1(stem)
        second = teacher.layer2(first)
        got = adapter.stage_features(teacher, x)
        assert [tuple(t.shape) for t in got] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
        torch.testing.assert_close(got[0], first)
        torch.testing.assert_close(got[1], second)
        torch.testing.assert_close(got[2], adapter.features(teacher, x))
        pruned = adapter.stage_features(student, x)  # layer1.1 and layer2.1 are gone; the openers stay
    assert [t.shape for t in pruned] == [t.shape for t in got]
    assert not torch.allclose(pruned[0], got[0])


def test_stage_ends_survive_any_drop_when_first_blocks_may_go(assets_dir):
    """With ``keep_stage_first`` off, a stage's first block may be dropped too; a stage end is never
    a unit, so a pruned copy still offers every stage's output."""
    from dfpractise.models.adapter import adapter_for

    teacher = create_model("cifar10_resnet20", weights=None).eval()
    adapter = adapter_for(teacher, keep_stage_first=False)
    units = {b.module for b in adapter.blocks}
    assert "layer1.0" in units and adapter.stage_ends == ["layer2.0", "layer3.0"]
    pruned = adapter.drop([b.name for b in adapter.blocks])
    with torch.no_grad():
        assert len(adapter.stage_features(pruned, torch.randn(1, 3, 32, 32))) == 3


def test_mir_stages_lowers_the_error_at_every_stage_and_keeps_the_head(pair, images):
    from dfpractise.models.adapter import adapter_for

    teacher, student = pair
    adapter = adapter_for(teacher)
    head = student.linear.weight.clone()
    x = normalize(images)

    def errors():
        with torch.no_grad():
            return [torch.nn.functional.mse_loss(s, t).item() for s, t in
                    zip(adapter.stage_features(student.eval(), x), adapter.stage_features(teacher, x))]

    before = errors()
    recover(student, teacher, images, RecoveryConfig(method="mir-stages", iterations=30, batch_size=8, lr=0.01),
            identity, normalize, seed=0)
    after = errors()
    assert all(a < b for a, b in zip(after, before)), (before, after)
    assert torch.equal(student.linear.weight, head)


def test_mir_stages_is_mir_on_a_model_of_one_stage():
    """A model whose units all sit in one stage has no stage end: only the feature map is mimicked,
    step for step as MiR does."""
    from dfpractise.models.adapter import adapter_for, set_spec
    from dfpractise.models.registry import ModelSpec
    from test_public_api import TinyNet

    torch.manual_seed(0)
    teacher = set_spec(TinyNet().eval(), ModelSpec("tiny", 16, (0.5,) * 3, (0.25,) * 3, 4))
    adapter = adapter_for(teacher)
    assert adapter.stage_ends == []
    tiny = torch.rand(12, 3, 16, 16)
    plain, staged = (adapter.drop([adapter.blocks[0].name]) for _ in range(2))
    for student, method in ((plain, "mir"), (staged, "mir-stages")):
        recover(student, teacher, tiny, RecoveryConfig(method=method, iterations=4, batch_size=4, lr=0.01),
                identity, normalize, seed=1, adapter=adapter)
    for key, value in plain.state_dict().items():
        assert torch.equal(staged.state_dict()[key], value), key


@pytest.mark.parametrize("milestones, expected", [
    (None, [0.01] * 6 + [0.001] * 2),  # the default: one tenfold fall at 3/4
    ((0.25, 0.5), [0.01] * 2 + [0.001] * 2 + [0.0001] * 4),
])
def test_the_learning_rate_falls_tenfold_at_each_milestone(pair, images, monkeypatch, milestones, expected):
    teacher, student = pair
    seen = []
    step = torch.optim.SGD.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    settings = {} if milestones is None else {"milestones": milestones}
    config = RecoveryConfig(iterations=8, batch_size=4, lr=0.01, teacher_views=0, mix="none", **settings)
    recover(student, teacher, images[:8], config, identity, normalize, seed=0)
    assert seen == pytest.approx(expected)

"""The recovery-settings benchmark's larger draws: more real images than the tiny set, never from
the held-out slice that settings are judged on."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from benchmarks.recovery_settings import outside_holdout, parse_variant
from benchmarks.speed import holdout_slice
from dfpractise.errors import DataError


def _train_folder(root: Path, per_class: int) -> Path:
    for index, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (index * 100, i * 10, 50)).save(root / name / f"{i:04d}.png")
    return root


def test_a_larger_draw_leaves_out_every_held_out_image(tmp_path):
    train = _train_folder(tmp_path / "train", per_class=210)  # 200 a class are held out, 10 left
    holdout = holdout_slice([], train, tmp_path / "holdout")
    held = {p.resolve() for p in holdout.rglob("*.png")}
    assert len(held) == 400
    drawn = outside_holdout(train, holdout, 20, image_size=8, seed=3)
    assert len(drawn.images) == 20 and drawn.images.shape[1:] == (3, 8, 8)
    assert not {Path(f).resolve() for f in drawn.files} & held
    assert sorted(drawn.labels.tolist()) == [0] * 10 + [1] * 10
    again = outside_holdout(train, holdout, 20, image_size=8, seed=3)
    assert again.files == drawn.files  # the run's seed draws the same images


def test_asking_for_more_than_lies_outside_the_slice_is_refused_in_one_line(tmp_path):
    train = _train_folder(tmp_path / "train", per_class=205)
    holdout = holdout_slice([], train, tmp_path / "holdout")
    with pytest.raises(DataError, match="holds 10 images outside the held-out slice"):
        outside_holdout(train, holdout, 11, image_size=8, seed=1)


def test_the_images_key_is_read_as_a_number_beside_recovery_settings():
    label, changes = parse_variant("ceiling:images=8000,iterations=8000,method=mir-stages")
    assert label == "ceiling" and changes == {"images": 8000, "iterations": 8000, "method": "mir-stages"}


def _tiny(n: int, labelled: bool, value: float = 0.5):
    import torch

    from dfpractise.sources import TinySet

    return TinySet(images=torch.full((n, 3, 8, 8), value), labels=torch.zeros(n, dtype=torch.long) if labelled else None)


def test_out_of_domain_photos_are_added_to_the_run_s_set_unlabelled(tmp_path, monkeypatch):
    from benchmarks.recovery_settings import variant_images

    photos = tmp_path / "assets" / "imagenet-sample-256"
    photos.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (20, 12), (i * 40, 0, 0)).save(photos / f"n{i:08d}_x.JPEG")
    monkeypatch.setenv("DFPRACTISE_ASSETS", str(tmp_path / "assets"))
    tiny = _tiny(4, labelled=True)
    both = variant_images({"ood": 5}, tiny, tmp_path, tmp_path, image_size=8, seed=1)
    assert len(both) == 9 and both.labels is None
    assert (both.images[:4] == 0.5).all() and not (both.images[4:] == 0.5).all()
    alone = variant_images({"ood": 5, "tiny": False}, tiny, tmp_path, tmp_path, image_size=8, seed=1)
    assert len(alone) == 5 and (alone.images == both.images[4:]).all()
    assert variant_images({}, tiny, tmp_path, tmp_path, image_size=8, seed=1) is tiny
    with pytest.raises(DataError, match="recovers from no images"):
        variant_images({"tiny": False}, tiny, tmp_path, tmp_path, image_size=8, seed=1)


def test_adaptive_images_compete_with_the_student_and_are_cached_apart_from_the_control():
    """The second round's images: made against the student where a weight is given (the report says
    how often the student agreed on them), plain BN inversion at weight 0, each in its own cache."""
    import torch

    from benchmarks.recovery_settings import adaptive_images
    from dfpractise.config import RunConfig
    from dfpractise.models import create_model
    from dfpractise.models.adapter import adapter_for

    torch.manual_seed(0)
    teacher = create_model("cifar10_resnet20")
    teacher.eval()
    student = adapter_for(teacher).drop(["layer1.1"])
    config = RunConfig(data={"source": "synthetic", "num_images": 4, "synthesis": {"steps": 2, "batch_size": 10}})
    made = adaptive_images(teacher, "test-teacher", student, config, count=10, weight=1.0)
    control = adaptive_images(teacher, "test-teacher", student, config, count=10, weight=0.0)
    assert made["images"].images.shape == control["images"].images.shape == (10, 3, 32, 32)
    assert made["report"]["competition_weight"] == 1.0 and 0 <= made["report"]["student_agreement"] <= 1
    assert "student_agreement" not in control["report"]
    assert made["images"].info["cache"] != control["images"].info["cache"]
    assert not torch.equal(made["images"].images, control["images"].images)
    again = adaptive_images(teacher, "test-teacher", student, config, count=10, weight=1.0)
    assert torch.equal(again["images"].images, made["images"].images)  # read back from its cache


def test_minimal_covers_reach_the_target_with_no_block_to_spare():
    from benchmarks.recovery_settings import minimal_covers

    saving = {"a.1": 14.0, "a.2": 14.0, "b.1": 10.0, "c.1": 8.0}
    covers = minimal_covers(saving, 30.0)
    assert covers == [["a.1", "a.2", "b.1"], ["a.1", "a.2", "c.1"], ["a.1", "b.1", "c.1"], ["a.2", "b.1", "c.1"]]
    for cover in covers:
        total = sum(saving[n] for n in cover)
        assert total >= 30 and all(total - saving[n] < 30 for n in cover)
    assert minimal_covers(saving, 50.0) == []  # every block together saves 46
    assert minimal_covers(saving, 46.0) == [["a.1", "a.2", "b.1", "c.1"]]


def test_cover_variants_repeat_each_variant_on_the_other_covers(tmp_path):
    import json

    from benchmarks.recovery_settings import cover_variants

    (tmp_path / "recipe.yaml").write_text("model: cifar10_resnet20\nlatency_reduction: 0.3\n")
    (tmp_path / "latency.json").write_text(json.dumps({"blocks": [
        {"name": "layer1.1", "delta_lat": 14.0}, {"name": "layer1.2", "delta_lat": 14.0},
        {"name": "layer2.1", "delta_lat": 10.0}]}))
    (tmp_path / "manifest.json").write_text(json.dumps({"dropped": ["layer1.1", "layer1.2", "layer2.1"]}))
    assert cover_variants(tmp_path, ["base:method=mir"]) == [], "the run's own selection is not repeated"
    (tmp_path / "latency.json").write_text(json.dumps({"blocks": [
        {"name": "layer1.1", "delta_lat": 20.0}, {"name": "layer1.2", "delta_lat": 20.0},
        {"name": "layer2.1", "delta_lat": 10.0}]}))
    variants = cover_variants(tmp_path, ["base:method=mir", "own:"])
    assert variants[:2] == ["base@layer1.1+layer1.2:method=mir,drop=layer1.1+layer1.2",
                            "own@layer1.1+layer1.2:drop=layer1.1+layer1.2"]
    assert [v.split(":")[0] for v in variants[2:]] == [
        "base@layer1.1+layer2.1", "own@layer1.1+layer2.1", "base@layer1.2+layer2.1", "own@layer1.2+layer2.1"]
    assert parse_variant(variants[0])[1] == {"method": "mir", "drop": "layer1.1+layer1.2"}


def test_the_set_cost_probe_ranks_covers_against_their_recovered_top1(tmp_path):
    import json

    from benchmarks.set_costs import heldout_top1, score_covers, spearman

    (tmp_path / "recipe.yaml").write_text("model: cifar10_resnet20\nlatency_reduction: 0.3\n")
    (tmp_path / "latency.json").write_text(json.dumps({"blocks": [
        {"name": "a.1", "delta_lat": 14.0}, {"name": "a.2", "delta_lat": 14.0}, {"name": "b.1", "delta_lat": 10.0}]}))
    (tmp_path / "scores.json").write_text(json.dumps({"costs": {"a.1": 0.3, "a.2": 0.6, "b.1": 0.25}}))
    rows = score_covers(tmp_path, joint=False)
    assert rows == [{"blocks": ["a.1", "a.2", "b.1"], "summed": 1.15}]
    entry = {"dropped": ["b.1", "a.1"], "variants": {
        "stages": {"changes": {}, "top1": {"holdout": 90.0}},
        "stages@a.2+b.1": {"changes": {"drop": "a.2+b.1"}, "top1": {"holdout": 91.0}},
        "other@a.1+a.2": {"changes": {"drop": "a.1+a.2"}, "top1": {"holdout": 50.0}}}}
    assert heldout_top1(entry, "stages") == {"a.1+b.1": 90.0, "a.2+b.1": 91.0}
    assert spearman([1.0, 2.0, 3.0, 4.0], [90.0, 80.0, None, 70.0]) == -1.0
    assert spearman([1.0, 2.0], [90.0, 80.0]) is None


def test_a_short_recovery_scores_each_set_on_tiny_set_images_it_never_saw():
    import torch

    from benchmarks.set_costs import recovered_scores
    from dfpractise.config import RunConfig
    from dfpractise.engine import prepare
    from dfpractise.models import create_model

    torch.manual_seed(0)
    config = RunConfig(model="cifar10_resnet20", weights=None, latency_reduction=0.3)
    setup = prepare(config, teacher=create_model("cifar10_resnet20").eval())
    images = torch.rand(10, 3, 32, 32)
    covers = [["layer1.1"], ["layer1.1", "layer3.2"]]
    scores = recovered_scores(config, setup, images, covers, iterations=3)
    from benchmarks.set_costs import RECOVERED_SIGNALS

    assert [sorted(s) for s in scores] == [sorted(RECOVERED_SIGNALS)] * 2
    assert all(s["recovered_mse"] > 0 and 0 <= s["recovered_disagreement"] <= 1 for s in scores)
    # the stage error includes the final features' error; the KLs are divergences, never negative
    assert all(s["recovered_stages_mse"] >= s["recovered_mse"] for s in scores)
    assert all(s["recovered_kl"] >= 0 and s["recovered_blend_kl"] >= 0 for s in scores)
    assert recovered_scores(config, setup, images, covers, iterations=3) == scores  # seeded: a rerun agrees

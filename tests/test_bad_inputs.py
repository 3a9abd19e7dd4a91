"""The bad-input table of README.md ("What bad input gets"), row by row, through the command line.

Each bad input ends in one line `error: ...` and exit code 2 (or in a correct result), never a
traceback, and is refused before the work it would spoil. Rows already covered in test_cli.py,
test_recipe.py or test_run_safety.py are named in the README table and not repeated here.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dfpractise.cli import main
from dfpractise.errors import DataError
from dfpractise.models.registry import ModelSpec
from dfpractise.recipe import resolve_config
from dfpractise.sources.images import class_indices, list_class_files, list_image_files
from synthesizers import Synthesizer, synthesize
from synthesizers.base import BatchResult
from synthesizers.files import atomic_write

MODEL = ["--model", "cifar10_resnet20", "--weights", "cifar10jpeg-resnet20"]
QUICK = ["--score-iterations", "1", "--recovery-iterations", "2", "--latency-repeats", "1", "--batch-size", "8",
         "--num-images", "8", "--quiet"]
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _images(folder: Path, source: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted(source.iterdir())[:count]:
        shutil.copy(image, folder / image.name)
    return folder


@pytest.fixture(scope="module")
def val(assets_dir) -> Path:
    return assets_dir / "cifar10-jpeg" / "val"


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory, val) -> Path:
    """airplane, cat, dog: some of CIFAR-10's classes, 12 images each."""
    root = tmp_path_factory.mktemp("three")
    for name in ("airplane", "cat", "dog"):
        _images(root / name, val / name, 12)
    return root


@pytest.fixture(scope="module")
def twelve_classes(tmp_path_factory, val) -> Path:
    """Twelve folders named c0..c11: not the model's classes, and more of them than it has."""
    root = tmp_path_factory.mktemp("twelve")
    for i in range(12):
        _images(root / f"c{i}", val / CIFAR10[i % 10], 2)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, assets_dir) -> Path:
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    result = _cli("run", *MODEL, "--data", assets_dir / "cifar10-jpeg" / "train", "--drop", "1",
                  "--recovery", "none", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# ---------------------------------------------------------------- image folders


def test_mixed_folder_scores_the_readable_images_and_says_how_many_were_skipped(run_dir, tmp_path, val):
    mixed = _images(tmp_path / "mixed" / "cat", val / "cat", 6).parent
    (mixed / "cat" / "broken.jpg").write_bytes(b"not an image")
    (mixed / "cat" / "notes.txt").write_text("not an image either")
    (mixed / "loose.jpg").write_bytes((val / "dog" / sorted(os.listdir(val / "dog"))[0]).read_bytes())
    result = _cli("evaluate", run_dir, "--data", mixed)
    assert result.exit_code == 0, result.output
    assert "6 images:" in result.stdout and "skipped 1 unreadable" in result.stderr


def test_a_folder_of_some_of_the_models_classes_is_scored_with_the_models_labels(run_dir, three_classes):
    result = _cli("evaluate", run_dir, "--data", three_classes, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["teacher_top1"] > 60  # 33% when labels came from folder order


def test_class_folders_that_are_not_the_models_classes_are_refused(run_dir, twelve_classes):
    _one_line_error(_cli("evaluate", run_dir, "--data", twelve_classes), "c0", "not classes of cifar10_resnet20",
                    "12 class folders for 10 classes")


def test_label_training_on_mismatched_folders_is_refused_before_any_timing(tmp_path, twelve_classes):
    out = tmp_path / "bp"
    result = _cli("run", *MODEL, "--data", twelve_classes, "--drop", "1", "--recovery", "bp", *QUICK, "--out", out)
    _one_line_error(result, "BP recovery trains on labels", "not classes of cifar10_resnet20")
    assert not out.exists()


def test_blending_images_for_a_label_trained_recovery_is_refused_before_any_work(tmp_path, three_classes):
    out = tmp_path / "bp-mix"
    result = _cli("run", *MODEL, "--data", three_classes, "--drop", "1", "--recovery", "bp",
                  "--set", "recovery.mix=mixup", *QUICK, "--out", out)
    _one_line_error(result, "recovery.mix mixup blends images", "BP recovery learns from their labels")
    assert not out.exists()
    typo = _cli("run", *MODEL, "--data", three_classes, "--drop", "1", "--set", "recovery.mix=mixop", *QUICK,
                "--out", out)
    _one_line_error(typo, "recovery.mix", "mixup")


def test_mismatched_evaluation_folder_is_refused_before_any_work(tmp_path, three_classes, twelve_classes):
    out = tmp_path / "ev"
    result = _cli("run", *MODEL, "--data", three_classes, "--eval-data", twelve_classes, "--drop", "1", *QUICK,
                  "--out", out)
    _one_line_error(result, str(twelve_classes), "not classes")
    assert not out.exists()
    missing = _cli("run", *MODEL, "--data", three_classes, "--eval-data", tmp_path / "nowhere", "--drop", "1",
                   *QUICK, "--out", out)
    _one_line_error(missing, "evaluation folder", "nowhere", "does not exist")


def test_label_free_recovery_uses_a_mismatched_folder_without_its_labels(tmp_path, twelve_classes):
    out = tmp_path / "mir"
    result = _cli("run", *MODEL, "--data", twelve_classes, "--drop", "1", "--recovery", "mir", *QUICK,
                  "--out", out)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in (out / "tiny_set.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(rows) == 8 and all(row[1] == "" for row in rows)  # no folder-order labels recorded


def test_class_matching_rules():
    cifar = ModelSpec("cifar", 32, (0, 0, 0), (1, 1, 1), 10, class_names=CIFAR10)
    assert class_indices(["airplane", "cat", "dog"], cifar, "X") == [0, 3, 5]
    assert class_indices(["Air_Plane", "TRUCK"], cifar, "X") == [0, 9]
    assert class_indices(["0", "7"], cifar, "X") == [0, 7]
    with pytest.raises(DataError, match="'airplane' and 'Airplane' of X are the same class"):
        class_indices(["airplane", "Airplane"], cifar, "X")
    with pytest.raises(DataError, match="class folder plane is not a class of cifar"):
        class_indices(["airplane", "plane"], cifar, "X")
    unnamed = ModelSpec("net", 32, (0, 0, 0), (1, 1, 1), 3)
    assert class_indices(["a", "b", "c"], unnamed, "X") == [0, 1, 2]
    with pytest.raises(DataError, match="2 class folders but net has 3 outputs and names no classes"):
        class_indices(["a", "b"], unnamed, "X")
    from torchvision.models import ResNet18_Weights

    imagenet = ModelSpec("resnet18", 224, (0, 0, 0), (1, 1, 1), 1000,
                         class_names=tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"]))
    assert class_indices(["n01443537", "n15075141", "tench"], imagenet, "X") == [1, 999, 0]  # WordNet ids too


def test_a_symlink_loop_neither_hangs_nor_counts_images_twice(run_dir, tmp_path, val):
    root = tmp_path / "looped"
    cat = _images(root / "cat", val / "cat", 5)
    (cat / "deeper").mkdir()
    (cat / "deeper" / "up").symlink_to("..")  # a loop back to cat
    (cat / "root").symlink_to(root)  # a loop back to the top
    (cat / "again.jpg").symlink_to(cat / sorted(os.listdir(cat))[0])  # one file, two names
    (root / "parent").symlink_to("..")  # not a class: a link above the folder
    elsewhere = _images(tmp_path / "elsewhere", val / "dog", 3)
    (root / "dog").symlink_to(elsewhere)  # a class kept elsewhere is followed
    assert len(list_image_files(cat)) == 5
    classes, files = list_class_files(root)
    assert classes == ["cat", "dog"] and len(files) == 8
    result = _cli("evaluate", run_dir, "--data", root, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 8


# ---------------------------------------------------------------- weights files


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    weights = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": Payload()}, weights)
    line = _one_line_error(_cli("blocks", "--model", "cifar10_resnet20", "--weights", weights, "--repeats", "1"),
                           "evil.pt", "was refused and nothing in it was run", "trust", "state_dict")
    assert not marker.exists() and "weights_only=False" in line  # the advice comes with its warning


@pytest.mark.parametrize("content, words", [
    (b"hello, not a checkpoint", ["not a PyTorch checkpoint"]),
    (None, ["truncated"]),
])
def test_a_truncated_or_non_checkpoint_weights_file_is_one_line(tmp_path, assets_dir, content, words):
    weights = tmp_path / "w.pt"
    whole = (assets_dir / "weights" / "cifar10jpeg-resnet20.pt").read_bytes()
    weights.write_bytes(content if content is not None else whole[: len(whole) // 2])
    _one_line_error(_cli("blocks", "--model", "cifar10_resnet20", "--weights", weights, "--repeats", "1"),
                    "cannot load weights file", *words)


# ---------------------------------------------------------------- counts, targets, devices, options


def test_too_many_blocks_to_drop_is_refused_before_any_timing(tmp_path, three_classes):
    out = tmp_path / "o"
    _one_line_error(_cli("run", *MODEL, "--data", three_classes, "--drop", "99", *QUICK, "--out", out),
                    "drop 99 blocks", "only 6")
    assert not out.exists()


def test_an_unreachable_target_is_said_right_after_timing_before_scoring(tmp_path, three_classes):
    out = tmp_path / "o"
    result = _cli("run", *MODEL, "--data", three_classes, "--latency-reduction", "0.97", *QUICK, "--out", out)
    _one_line_error(result, "97% latency cut is out of reach")
    assert (out / "latency.json").exists() and not (out / "scores.json").exists()


@pytest.mark.parametrize("command", ["run", "blocks", "evaluate", "latency", "synthesize"])
@pytest.mark.parametrize("device, words", [
    ("cuda:7", ["device 'cuda:7' is not available here", "the devices here are cpu"]),
    ("gpu", ["unknown device 'gpu'", "the devices here are cpu"]),
])
def test_a_device_this_machine_lacks_is_one_line_naming_the_devices(command, device, words, run_dir, tmp_path,
                                                                    three_classes):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    args = {
        "run": ["run", *MODEL, "--data", three_classes, "--drop", "1", *QUICK, "--out", tmp_path / "o"],
        "blocks": ["blocks", "--model", "cifar10_resnet20", "--repeats", "1"],
        "evaluate": ["evaluate", run_dir, "--data", three_classes],
        "latency": ["latency", run_dir, "--repeats", "1"],
        "synthesize": ["synthesize", *MODEL, "--num-images", "2", "--out", tmp_path / "s"],
    }[command]
    _one_line_error(_cli(*args, "--device", device), *words)


@pytest.mark.parametrize("args, words", [
    (["evaluate", "RUN", "--data", "DATA", "--batch-size", "0"], ["'--batch-size': 0 is not in the range x>=1"]),
    (["blocks", "--model", "cifar10_resnet20", "--repeats", "0"], ["latency.repeats must be at least 1, got 0"]),
    (["blocks", "--model", "cifar10_resnet20", "--batch-size", "0"], ["latency.batch_size must be at least 1"]),
    (["run", "--num-images", "0"], ["data.num_images must be at least 1, got 0"]),
])
def test_zero_sizes_and_repeats_are_refused(args, words, run_dir, three_classes):
    args = [{"RUN": run_dir, "DATA": three_classes}.get(a, a) for a in args]
    _one_line_error(_cli(*args), *words)


def test_usage_errors_are_one_line_too(run_dir):
    _one_line_error(_cli("evaluate", run_dir), "Missing option '--data'", "evaluate --help")
    _one_line_error(_cli("frobnicate"), "No such command 'frobnicate'")


def test_numbers_in_exponent_form_are_numbers_in_recipes_too(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  source: synthetic\n  synthesis: {lr: 1e-3, steps: 2}\nrecovery:\n  lr: 2.5e-2\n"
                      "  milestones: 0.5\n")
    config = resolve_config(recipe, {})
    assert config.data.synthesis == {"lr": 0.001, "steps": 2} and config.recovery.lr == 0.025
    assert config.recovery.milestones == (0.5,)


@pytest.mark.parametrize("text, words", [
    ("data: {source: synthetic, num_images: 2, synthesis: {lr: fast, steps: 1}}\n", ["lr must be a number", "fast"]),
    ("recovery: {milestones: [800, 1600]}\n", ["milestones are fractions of the iterations", "800"]),
    ("recovery: {milestones: soon}\n", ["recovery.milestones", "soon"]),
    ("data: {num_imgs: 5}\n", ["unknown recipe key 'data.num_imgs'"]),
    ("seed: [1\n", ["invalid YAML"]),
    ("base: nowhere.yaml\n", ["nowhere.yaml does not exist"]),
])
def test_bad_recipes_are_one_line(tmp_path, text, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: cifar10_resnet20\nweights: cifar10jpeg-resnet20\ndrop: 1\n" + text)
    _one_line_error(_cli("run", "--recipe", recipe, "--out", tmp_path / "o", "--quiet"), *words)
    assert not (tmp_path / "o" / "latency.json").exists()


# ---------------------------------------------------------------- writing: full disk, read-only, modes


class _DiskFillsAt:
    """``os`` for ``synthesizers.files``, whose rename of one file fails as a full disk would."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):
        return getattr(os, attr)

    def replace(self, src, dst):
        if Path(dst).name == self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return os.replace(src, dst)


def test_a_full_disk_is_one_line_and_the_run_folder_stays_resumable(monkeypatch, tmp_path, three_classes):
    import synthesizers.files

    out = tmp_path / "run"
    args = ["run", *MODEL, "--data", three_classes, "--drop", "1", "--recovery", "none", *QUICK, "--out", out]
    with monkeypatch.context() as patch:
        patch.setattr(synthesizers.files, "os", _DiskFillsAt("selection.json"))
        line = _one_line_error(_cli(*args), str(out / "selection.json"), "No space left on device", "--resume")
    assert ".tmp" not in line and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "scores.json").exists() and not (out / "selection.json").exists()
    resumed = _cli("run", "--resume", "--out", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert (out / "report.json").exists()


@pytest.mark.parametrize("saver", ["torch", "safetensors"])
def test_savers_that_hide_a_full_disk_in_their_own_errors_still_say_it(monkeypatch, tmp_path, saver):
    import synthesizers.files

    def torch_save(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    def safetensors_save(tmp):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    class Full:
        f_bavail = 0

    monkeypatch.setattr(synthesizers.files.os, "statvfs", lambda folder: Full())
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "model.bin", torch_save if saver == "torch" else safetensors_save)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "model.bin")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, ["cannot write /data/x.json: No space left on device", "finished work is kept", "--resume"]),
    (errno.EDQUOT, ["cannot write /data/x.json", "finished work is kept"]),
    (errno.EROFS, ["cannot write /data/x.json: Read-only file system", "choose a folder you can write"]),
    (errno.EACCES, ["no permission for /data/x.json", "choose a folder you can write"]),
    (errno.ENOENT, ["cannot use /data/x.json: No such file or directory"]),
])
def test_every_command_says_a_failed_write_in_one_line(code, words):
    import click

    from dfpractise.cli import handle_errors

    @click.command()
    @handle_errors
    def writes():
        raise OSError(code, os.strerror(code), "/data/x.json")

    _one_line_error(CliRunner().invoke(writes, []), *words)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path, three_classes):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = _cli("run", *MODEL, "--data", three_classes, "--drop", "1", *QUICK, "--out", locked / "run")
        _one_line_error(result, str(locked / "run"))
    finally:
        locked.chmod(0o700)


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, three_classes):
    (tmp_path / "taken").write_text("mine")
    result = _cli("run", *MODEL, "--data", three_classes, "--drop", "1", *QUICK, "--out", tmp_path / "taken")
    _one_line_error(result, "taken", "is a file")
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_output_folder_the_system_will_not_create_is_one_line(tmp_path, three_classes):
    result = _cli("run", *MODEL, "--data", three_classes, "--drop", "1", *QUICK, "--out", "/proc/dfpractise-x")
    _one_line_error(result, "/proc/dfpractise-x")


def test_outputs_get_the_users_umask_not_private_modes(tmp_path):
    from safetensors.torch import save_file

    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.pt", lambda tmp: torch.save({"x": torch.zeros(1)}, tmp))
        atomic_write(tmp_path / "b.safetensors", lambda tmp: save_file({"x": torch.zeros(1)}, str(tmp)))
        atomic_write(tmp_path / "c.png", lambda tmp: Image.new("RGB", (4, 4)).save(tmp, format="PNG"))
    finally:
        os.umask(previous)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == dict.fromkeys(
        ["a.pt", "b.safetensors", "c.png"], 0o640)


# ---------------------------------------------------------------- the synthetic cache on a full disk


class _Noise(Synthesizer):
    name = "noise"
    batch_size = 2

    def settings(self):
        return {}

    def generate(self, labels, image_size, seed, report):
        generator = torch.Generator().manual_seed(seed)
        report(loss=0.0)
        return BatchResult(torch.rand(len(labels), 3, image_size, image_size, generator=generator))


def test_a_cache_whose_first_batch_hit_a_full_disk_is_resumed_not_refused(monkeypatch, tmp_path):
    import synthesizers.files

    folder = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setattr(synthesizers.files, "os", _DiskFillsAt("00001.png"))
        with pytest.raises(OSError, match="No space left"):
            synthesize(_Noise(), 4, 8, 2, seed=0, folder=folder)
    assert json.loads((folder / "index.json").read_text())["batches"] == {}  # it says what it is
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    made = synthesize(_Noise(), 4, 8, 2, seed=0, folder=folder)
    assert made.generated_batches == 2 and len(made.images) == 4


def test_an_old_cache_without_index_and_with_stray_temporary_files_is_started_again(tmp_path):
    folder = tmp_path / "cache"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "images" / "00000.png")
    (folder / "images" / ".00001.png.k3j2.tmp").write_bytes(b"half a png")
    (folder / ".index.json.x1.tmp").write_text("{")
    made = synthesize(_Noise(), 4, 8, 2, seed=0, folder=folder, rebuild=True)
    assert made.generated_batches == 2
    assert sorted(p.name for p in folder.rglob("*")) == ["00000.png", "00001.png", "00002.png", "00003.png",
                                                         "images", "index.json"]
    again = synthesize(_Noise(), 4, 8, 2, seed=0, folder=folder)
    assert again.generated_batches == 0


def test_synthesize_resumes_a_folder_left_without_its_index(tmp_path):
    out = tmp_path / "set"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(out / "images" / "00000.png")
    (out / "images" / ".00001.png.ab12.tmp").write_bytes(b"")
    result = _cli("synthesize", *MODEL, "--num-images", "2", "--steps", "1", "--batch-size", "2", "--out", out,
                  "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "index.json").read_text())["batches"].keys() == {"0"}

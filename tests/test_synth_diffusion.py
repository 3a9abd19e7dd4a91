"""The diffusion synthesizer on tiny random pipelines saved to disk and loaded the real way (offline)."""

from __future__ import annotations

import functools
import json
import string
import sys
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from synthesizers.errors import ConfigError, DataError, SynthesisError  # noqa: E402
from synthesizers.base import create_synthesizer  # noqa: E402
from synthesizers.diffusion import DiffusionSynthesizer, fit_to_size  # noqa: E402
from synthesizers.generate import synthesize  # noqa: E402

DIT_NATIVE = 32  # latent 8 x VAE factor 4
SD_NATIVE = 16  # latent 8 x VAE factor 2


def _scheduler():
    return diffusers.DDIMScheduler(steps_offset=1, clip_sample=False)


def _vae(levels: int, size: int):
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[4] * levels, sample_size=size,
    )


def _save_dit(folder: Path, num_classes: int = 1000, id2label: dict[str, str] | None = None) -> Path:
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8, num_layers=1,
        norm_num_groups=2, sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes,
    )
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=_vae(3, DIT_NATIVE), scheduler=_scheduler())
    pipe.save_pretrained(folder)
    if id2label is not None:  # DiTPipeline does not save its label table; hub DiT repos carry it in model_index.json
        index = json.loads((folder / "model_index.json").read_text())
        index["id2label"] = id2label
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory) -> Path:
    labels = {"0": "tench, Tinca tinca", "1": "goldfish, Carassius auratus", "2": "great white shark",
              "3": "crane", "4": "crane"}  # ImageNet has two classes named "crane"
    return _save_dit(tmp_path_factory.mktemp("dit"), id2label=labels)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sd")
    words = root / "words"
    words.mkdir()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:  # letters only, no merges: every word is spelled out
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (words / "vocab.json").write_text(json.dumps(vocab))
    (words / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(words), model_max_length=32)
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, projection_dim=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        norm_num_groups=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=_vae(2, SD_NATIVE), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    folder = root / "pipeline"
    pipe.save_pretrained(folder)
    return folder


def _spy(monkeypatch, synth: DiffusionSynthesizer) -> list[dict]:
    """Record the keyword arguments of every pipeline call (the call itself still runs)."""
    pipe = synth.load()
    calls: list[dict] = []
    original = type(pipe).__call__

    @functools.wraps(original)  # keeps the signature the synthesizer inspects
    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    return calls


def _generate(synth, labels, size=16, seed=0):
    reports: list[dict] = []
    result = synth.generate(torch.tensor(labels), size, seed, lambda **fields: reports.append(fields))
    return result, reports


# ---------------------------------------------------------------------- class-conditional (DiT)


def test_dit_images_shape_range_and_determinism(dit_dir):
    synth = DiffusionSynthesizer(str(dit_dir), steps=3, batch_size=4)
    assert synth.batch_size == 4 and synth.steps_per_batch == 3
    result, reports = _generate(synth, [0, 1, 2], size=16, seed=0)
    images = result.images
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32  # native size is 32
    assert images.min() >= 0 and images.max() <= 1
    assert reports == [{"step": "1/3"}, {"step": "2/3"}, {"step": "3/3"}]  # DiT has no step callback
    assert 0 < result.stats["mean_pixel"] < 1
    again, _ = _generate(synth, [0, 1, 2], size=16, seed=0)
    other, _ = _generate(synth, [0, 1, 2], size=16, seed=1)
    assert torch.equal(images, again.images)
    assert not torch.allclose(images, other.images)
    settings = synth.settings()
    assert settings["kind"] == "class-conditional" and settings["class_ids"] == "identity"
    assert settings["pipeline"] == str(dit_dir.resolve()) and settings["dtype"] == "float32"
    json.dumps(settings)


def test_dit_class_labels_reach_the_pipeline(dit_dir, monkeypatch):
    synth = DiffusionSynthesizer(str(dit_dir), steps=2, class_ids=[7, 3, 5])
    calls = _spy(monkeypatch, synth)
    _generate(synth, [2, 0, 1, 0])
    assert calls[0]["class_labels"] == [5, 7, 3, 7]
    assert calls[0]["num_inference_steps"] == 2 and calls[0]["guidance_scale"] == 4.0
    assert calls[0]["output_type"] == "pt"
    assert synth.settings()["class_ids"] == [7, 3, 5]
    # the label changes the image, same noise (seed) otherwise
    identity = DiffusionSynthesizer(str(dit_dir), steps=2)
    a, _ = _generate(identity, [0, 0])
    b, _ = _generate(identity, [0, 1])
    assert torch.equal(a.images[0], b.images[0]) and not torch.allclose(a.images[1], b.images[1])


def test_dit_class_names_through_label_table(dit_dir, monkeypatch):
    synth = DiffusionSynthesizer(str(dit_dir), ["goldfish", "great_white_shark", "Tinca_tinca"], steps=1)
    assert synth.settings()["class_ids"] == [1, 2, 0]
    # a shared name goes to the teacher's own index when the table has it there, else to its first id
    names = ["goldfish", "great_white_shark", "Tinca_tinca", "crane", "crane"]
    assert DiffusionSynthesizer(str(dit_dir), names, steps=1).settings()["class_ids"] == [1, 2, 0, 3, 4]
    assert DiffusionSynthesizer(str(dit_dir), ["crane"], steps=1).settings()["class_ids"] == [3]
    # without a readable id2label, the pipeline's own get_label_ids is used
    monkeypatch.setattr("synthesizers.diffusion._label_table", lambda pipe, source: None)
    assert DiffusionSynthesizer(str(dit_dir), names[:3], steps=1).settings()["class_ids"] == [1, 2, 0]
    with pytest.raises(ConfigError, match="class_ids"):
        DiffusionSynthesizer(str(dit_dir), ["goldfish", "cat"], steps=1).load()


def test_dit_class_range_checks(dit_dir, tmp_path):
    with pytest.raises(ConfigError, match="1000"):
        DiffusionSynthesizer(str(dit_dir), num_classes=1001, steps=1).load()
    with pytest.raises(ConfigError, match="0 to 999"):
        DiffusionSynthesizer(str(dit_dir), class_ids=[1, 1000], steps=1).load()
    small = _save_dit(tmp_path / "dit10", num_classes=10)
    with pytest.raises(ConfigError, match="guidance_scale"):  # DiTPipeline's null class 1000 does not exist here
        DiffusionSynthesizer(str(small), steps=1).load()
    synth = DiffusionSynthesizer(str(small), steps=1, guidance_scale=1.0)
    assert _generate(synth, [9])[0].images.shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match="beyond the 10 classes"):
        _generate(synth, [10])


def test_non_finite_output_is_a_synthesis_error(dit_dir, monkeypatch):
    synth = DiffusionSynthesizer(str(dit_dir), steps=1)
    pipe = synth.load()
    monkeypatch.setattr(type(pipe), "__call__", lambda self, **kw: (torch.full((1, 3, 8, 8), float("nan")),))
    with pytest.raises(SynthesisError, match="non-finite"):
        _generate(synth, [0])


# ---------------------------------------------------------------------- text-to-image (Stable Diffusion)


def test_text_to_image_prompts_shape_and_determinism(sd_dir, monkeypatch):
    synth = DiffusionSynthesizer(
        str(sd_dir), ["gold_fish", "shark", "tench"], prompt_template="a {class} photo",
        negative_prompt="blurry", guidance_scale=2.5, steps=3,
    )
    calls = _spy(monkeypatch, synth)
    result, reports = _generate(synth, [2, 0, 1], size=12, seed=5)
    call = calls[0]
    assert call["prompt"] == ["a tench photo", "a gold fish photo", "a shark photo"]
    assert call["negative_prompt"] == ["blurry"] * 3 and call["guidance_scale"] == 2.5
    assert call["num_inference_steps"] == 3 and callable(call["callback_on_step_end"])
    assert reports == [{"step": "1/3"}, {"step": "2/3"}, {"step": "3/3"}]
    images = result.images
    assert images.shape == (3, 3, 12, 12) and images.dtype == torch.float32  # native size is 16
    assert images.min() >= 0 and images.max() <= 1
    again, _ = _generate(synth, [2, 0, 1], size=12, seed=5)
    other, _ = _generate(synth, [2, 0, 1], size=12, seed=6)
    assert torch.equal(images, again.images) and not torch.allclose(images, other.images)
    settings = synth.settings()
    assert settings["kind"] == "text-to-image" and settings["negative_prompt"] == "blurry"
    assert settings["prompts"] == ["a gold fish photo", "a shark photo", "a tench photo"]
    with pytest.raises(ConfigError, match="class_names"):
        _generate(synth, [3])


def test_text_to_image_needs_class_names(sd_dir):
    with pytest.raises(ConfigError, match="class_names"):
        DiffusionSynthesizer(str(sd_dir), steps=1).load()
    with pytest.raises(ConfigError, match="class_ids"):
        DiffusionSynthesizer(str(sd_dir), ["a"], class_ids=[0], steps=1).load()


# ---------------------------------------------------------------------- bad input


def test_bad_pipeline_locations(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="model_index.json"):
        DiffusionSynthesizer(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        DiffusionSynthesizer(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="does not exist"):
        DiffusionSynthesizer("./no/such/pipeline")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        DiffusionSynthesizer(str(tmp_path / "file"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"]}')
    with pytest.raises(DataError, match="cannot load a diffusion pipeline from folder"):
        DiffusionSynthesizer(str(broken)).load()
    assert DiffusionSynthesizer("owner/name").source == "owner/name"  # a hub id: not loaded until used


@pytest.mark.parametrize(
    "options, match",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"class_ids": [0, -1]}, "class_ids"),
        ({"class_names": ["a", "b"], "num_classes": 3}, "class_names"),
        ({"prompt_template": "a photo"}, "prompt_template"),
        ({"device": "nonsense"}, "device"),
    ],
)
def test_bad_options(dit_dir, options, match):
    with pytest.raises(ConfigError, match=match):
        DiffusionSynthesizer(str(dit_dir), **options)


def test_negative_prompt_on_class_conditional_is_refused(dit_dir):
    with pytest.raises(ConfigError, match="negative_prompt"):
        DiffusionSynthesizer(str(dit_dir), negative_prompt="blurry", steps=1).load()


def test_missing_diffusers_says_what_to_install(dit_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ConfigError, match=r"dfpractise\[diffusion\]"):
        DiffusionSynthesizer(str(dit_dir)).load()


# ---------------------------------------------------------------------- helpers, registry, driver


def test_fit_to_size_scales_short_side_and_crops_centre():
    images = torch.ones(2, 3, 20, 40)
    images[..., :6] = 0  # a stripe on the left: cropped away
    out = fit_to_size(images, 16)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-3)


def test_registered_and_created_by_name(dit_dir):
    synth = create_synthesizer("diffusion", pipeline=str(dit_dir), steps=2, batch_size=3)
    assert isinstance(synth, DiffusionSynthesizer) and synth.name == "diffusion" and synth.batch_size == 3


def test_through_the_driver_with_cache(dit_dir, tmp_path):
    synth = DiffusionSynthesizer(str(dit_dir), steps=2, batch_size=4)
    first = synthesize(synth, num_images=6, image_size=16, num_classes=3, seed=0, folder=tmp_path / "cache")
    assert first.generated_batches == 2 and first.images.shape == (6, 3, 16, 16)
    assert len(list((tmp_path / "cache" / "images").glob("*.png"))) == 6
    again = synthesize(synth, num_images=6, image_size=16, num_classes=3, seed=0, folder=tmp_path / "cache")
    assert again.generated_batches == 0
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)

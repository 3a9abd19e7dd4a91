"""Weight lookup, verification, download and strict loading; all offline (file:// and loopback)."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dfpractise.errors import ModelError
from dfpractise.models import (
    create_model,
    get_weight_spec,
    list_weights,
    load_state_dict_file,
    load_weights,
    resolve_weights,
    weights_sha256,
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test touches the real cache, torch hub dir, proxies or a URL override."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DFPRACTISE_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DFPRACTISE_WEIGHTS_URL", raising=False)
    monkeypatch.delenv("DFPRACTISE_ASSETS", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return cache


@pytest.fixture
def mirror(assets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DFPRACTISE_ASSETS", str(assets_dir))
    return assets_dir / "weights"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder to publish files from; the local mirror is switched off."""
    monkeypatch.setenv("DFPRACTISE_ASSETS", "")
    folder = tmp_path / "served"
    folder.mkdir()
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base(served: Path) -> Iterator[tuple[str, http.server.HTTPServer]]:
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _cache_files(cache: Path) -> list[str]:
    folder = cache / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_registered_hashes_match_mirror(mirror: Path) -> None:
    assert list_weights() == [
        "akamaster-cifar10-resnet20",
        "akamaster-cifar10-resnet56",
        "cifar10jpeg-resnet20",
        "cifar10jpeg-resnet56",
    ]
    for name in list_weights():
        spec = get_weight_spec(name)
        assert spec is not None and len(spec.sha256) == 64
        assert weights_sha256(mirror / spec.filename) == spec.sha256
        assert resolve_weights(name) == mirror / spec.filename
    assert get_weight_spec("akamaster-cifar10-resnet56").url.endswith("/resnet56-4bfd9763.th")
    assert list_weights("cifar10_resnet20") == ["akamaster-cifar10-resnet20", "cifar10jpeg-resnet20"]


def test_load_by_name_is_strict_and_exact(mirror: Path, isolated_env: Path) -> None:
    model = create_model("cifar10_resnet56", weights="cifar10jpeg-resnet56")
    reference = torch.load(mirror / "cifar10jpeg-resnet56.pt", map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert set(state) == set(reference) and len(state) == 332
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert _cache_files(isolated_env) == []  # the mirror was used, nothing copied


def test_akamaster_unwraps_and_strips_prefix(mirror: Path) -> None:
    sd = load_state_dict_file(mirror / "akamaster-cifar10-resnet20-12fca82f.th")
    assert "conv1.weight" in sd and not any(k.startswith("module.") for k in sd)
    assert "best_prec1" not in sd
    path = load_weights(create_model("cifar10_resnet20"), "akamaster-cifar10-resnet20")
    assert path.name == "akamaster-cifar10-resnet20-12fca82f.th"


def test_load_by_path_and_safetensors(mirror: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = mirror / "cifar10jpeg-resnet20.pt"
    model = create_model("cifar10_resnet20", weights=str(path))
    st = tmp_path / "r20.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    assert load_weights(create_model("cifar10_resnet20"), str(st)) == st


def test_wrong_architecture_names_missing_keys(mirror: Path) -> None:
    with pytest.raises(ModelError, match=r"cifar10_resnet56.*missing keys \(layer1\.3\..*is for cifar10_resnet20"):
        create_model("cifar10_resnet56", weights="cifar10jpeg-resnet20")
    with pytest.raises(ModelError, match=r"unexpected keys \(layer1\.3\."):
        create_model("cifar10_resnet20", weights="cifar10jpeg-resnet56")


def test_shape_mismatch_names_both_shapes(mirror: Path) -> None:
    with pytest.raises(ModelError, match=r"linear\.weight file \[10, 64\] vs model \[100, 64\].*num_classes"):
        create_model("cifar10_resnet20", weights="cifar10jpeg-resnet20", num_classes=100)


def test_bad_references(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_weights(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelError, match=r"neither a file nor a known weights name \(known: akamaster"):
        resolve_weights("resnet56-imagenet")
    with pytest.raises(ModelError, match="unknown torchvision weights"):
        resolve_weights("ResNet34_Weights.NOPE")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=f"cannot load weights file {corrupt}"):
        load_weights(create_model("cifar10_resnet20"), str(corrupt))
    not_sd = tmp_path / "list.pt"
    torch.save([1, 2], not_sd)
    with pytest.raises(ModelError, match="no state dict"):
        load_state_dict_file(not_sd)


def test_missing_without_url_says_where_it_looked(served: Path) -> None:
    with pytest.raises(ModelError, match=r"not found in .*DFPRACTISE_ASSETS is not set.*set \$DFPRACTISE_ASSETS"):
        resolve_weights("cifar10jpeg-resnet56")


def test_download_file_url_then_cache(
    served: Path, mirror: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFPRACTISE_ASSETS", "")
    spec = get_weight_spec("akamaster-cifar10-resnet20")
    shutil.copy(mirror / spec.filename, served / spec.filename)
    monkeypatch.setenv("DFPRACTISE_WEIGHTS_URL", served.as_uri())

    first = resolve_weights(spec.name)
    assert first == isolated_env / "weights" / spec.filename
    assert weights_sha256(first) == spec.sha256
    shutil.rmtree(served)  # the source is gone: the second lookup must use the cache
    assert resolve_weights(spec.name) == first
    assert _cache_files(isolated_env) == [spec.filename]


def test_download_http_then_cache(
    http_base: tuple[str, http.server.HTTPServer],
    served: Path,
    mirror: Path,
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DFPRACTISE_ASSETS", "")
    base, server = http_base
    spec = get_weight_spec("cifar10jpeg-resnet20")  # no public URL, but the override supplies one
    shutil.copy(mirror / spec.filename, served / spec.filename)
    monkeypatch.setenv("DFPRACTISE_WEIGHTS_URL", base)

    model = create_model("cifar10_resnet20", weights=spec.name)
    assert _cache_files(isolated_env) == [spec.filename]
    server.shutdown()
    again = create_model("cifar10_resnet20", weights=spec.name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_corrupt_download_is_rejected_and_not_kept(
    http_base: tuple[str, http.server.HTTPServer], served: Path, mirror: Path, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DFPRACTISE_ASSETS", "")
    spec = get_weight_spec("akamaster-cifar10-resnet56")
    data = bytearray((mirror / spec.filename).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (served / spec.filename).write_bytes(bytes(data))
    monkeypatch.setenv("DFPRACTISE_WEIGHTS_URL", http_base[0])
    with pytest.raises(ModelError, match=f"sha256 .* expected {spec.sha256}.*deleted"):
        resolve_weights(spec.name)
    assert _cache_files(isolated_env) == []


def test_bad_cached_copy_is_replaced(
    served: Path, mirror: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_weight_spec("akamaster-cifar10-resnet20")
    (isolated_env / "weights").mkdir(parents=True)
    (isolated_env / "weights" / spec.filename).write_bytes(b"truncated")
    shutil.copy(mirror / spec.filename, served / spec.filename)
    monkeypatch.setenv("DFPRACTISE_ASSETS", "")
    monkeypatch.setenv("DFPRACTISE_WEIGHTS_URL", served.as_uri())
    assert weights_sha256(resolve_weights(spec.name)) == spec.sha256


def test_unreachable_server(served: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("DFPRACTISE_WEIGHTS_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match=r"could not download weights 'akamaster-cifar10-resnet20'"):
        resolve_weights("akamaster-cifar10-resnet20")
    assert _cache_files(isolated_env) == []


def test_torchvision_enum_checks_hash_prefix(
    served: Path, tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1
    (served / fake).write_bytes(b"not the published file")
    monkeypatch.setenv("DFPRACTISE_WEIGHTS_URL", served.as_uri())
    with pytest.raises(ModelError, match=r"ResNet18_Weights\.IMAGENET1K_V1.* expected f37072fd"):
        create_model("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
    assert _cache_files(isolated_env) == []

    local = tmp_path / "assets" / "weights"
    local.mkdir(parents=True)
    shutil.copy(served / fake, local / fake)
    monkeypatch.setenv("DFPRACTISE_ASSETS", str(tmp_path / "assets"))
    with pytest.raises(ModelError, match=rf"file {local / fake} .*expected f37072fd.*replace it"):
        resolve_weights("ResNet18_Weights.IMAGENET1K_V1")


def test_weights_sha256(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert weights_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()

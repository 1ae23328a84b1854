"""weights="imagenet" end to end, against a real HTTP server on 127.0.0.1.

The server serves a generated official-format checkpoint (random S12 weights saved
with torch.save, as the release files are) under the release file name, and is
reached through KERAS_POOLFORMER_MIRROR. It counts the requests it answers.
"""

import http.server
import os
import threading

import numpy as np
import pytest
from conftest import real_or_random_images, reference
from reference import reference_logits

import keras_poolformer as kp
from keras_poolformer import pretrained

torch = pytest.importorskip("torch")
FILENAME = "poolformer_s12.pth.tar"


class _Server(http.server.ThreadingHTTPServer):
    """Serves files from ``root``; ``truncate`` makes it send half of each file
    while announcing the whole length, then hang up."""

    def __init__(self, root):
        self.root, self.requests, self.truncate = root, [], False
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        server = self.server
        server.requests.append(self.path)
        path = os.path.join(server.root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if server.truncate else data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    _, state = reference("s12")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, root / FILENAME)
    server = _Server(str(root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, root
    server.shutdown()
    server.server_close()


@pytest.fixture
def mirror(served, tmp_path, monkeypatch):
    """A fresh, empty cache and the mirror pointed at the local server."""
    server, root = served
    server.requests.clear()
    server.truncate = False
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/")
    return server


def cache_files():
    folder = pretrained.cache_dir()
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_first_load_downloads_and_converts_second_load_asks_nothing(mirror):
    torch_model, _ = reference("s12")
    model = kp.PoolFormerS12(weights="imagenet", classifier_activation=None)
    assert mirror.requests == ["/" + FILENAME]
    assert cache_files() == sorted([FILENAME, "poolformer_s12.json", "poolformer_s12.weights.h5"])

    pixels = real_or_random_images(4, (224, 224))
    theirs = reference_logits(torch_model, kp.preprocess_input(pixels, include_preprocessing=False))
    assert np.abs(model(pixels).numpy() - theirs).max() <= 1e-4

    mirror.requests.clear()
    again = kp.PoolFormerS12(weights="imagenet", classifier_activation=None)
    assert mirror.requests == []
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    headless = kp.PoolFormerS12(weights="imagenet", include_top=False, pooling="avg")
    assert headless.output_shape == (None, 512) and mirror.requests == []


def test_truncated_download_is_an_error_and_leaves_nothing(mirror):
    mirror.truncate = True
    with pytest.raises(
        pretrained.WeightsUnavailableError, match=r"stopped after [\d,]+ of [\d,]+ bytes"
    ):
        kp.PoolFormerS12(weights="imagenet")
    assert cache_files() == []


def test_corrupted_cache_is_an_error_and_never_loads(mirror):
    kp.PoolFormerS12(weights="imagenet")
    converted = os.path.join(pretrained.cache_dir(), "poolformer_s12.weights.h5")
    with open(converted, "r+b") as f:  # flip bytes in the middle of the weights
        f.seek(os.path.getsize(converted) // 2)
        f.write(b"\x00\x01\x02\x03" * 16)
    with pytest.raises(ValueError, match="corrupted: sha256"):
        kp.PoolFormerS12(weights="imagenet")
    assert "poolformer_s12.weights.h5" not in cache_files()
    # The next load converts again from the verified download, without the network.
    mirror.requests.clear()
    kp.PoolFormerS12(weights="imagenet")
    assert mirror.requests == []


def test_damaged_download_is_removed(mirror, served, tmp_path, monkeypatch):
    _, root = served
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / FILENAME).write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setenv(pretrained.MIRROR_ENV, broken.as_uri() + "/")
    with pytest.raises(ValueError, match="not a valid PoolFormer-S12 checkpoint"):
        kp.PoolFormerS12(weights="imagenet")
    assert cache_files() == []


def test_pinned_hash_mismatch_is_refused(mirror, monkeypatch):
    monkeypatch.setitem(pretrained.SHA256, "s12", "0" * 64)
    with pytest.raises(ValueError, match="not the pinned 0000"):
        kp.PoolFormerS12(weights="imagenet")
    assert cache_files() == []


def test_file_mirror_works(served, tmp_path, monkeypatch):
    _, root = served
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, root.as_uri())
    kp.PoolFormerS12(weights="imagenet")
    assert "poolformer_s12.weights.h5" in cache_files()


def test_offline_without_cache_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens
    with pytest.raises(pretrained.WeightsUnavailableError) as info:
        kp.PoolFormerS24(weights="imagenet")
    message = str(info.value)
    assert pretrained.RELEASE_URL + "poolformer_s24.pth.tar" in message
    assert os.path.join(str(tmp_path / "keras"), "models", "keras_poolformer") in message
    assert pretrained.MIRROR_ENV in message

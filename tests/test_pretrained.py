"""weights="imagenet" end to end, against a real HTTP server on 127.0.0.1.

The server serves a generated official-format checkpoint (random S12 weights saved
with torch.save, as the release files are) under the release file name, and is
reached through KERAS_POOLFORMER_MIRROR. It counts the requests it answers.
"""

import http.server
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import imagenet_val_images, reference
from reference import reference_logits, torchvision_normalize

import keras_poolformer as kp
from keras_poolformer import pretrained

torch = pytest.importorskip("torch")
FILENAME = "poolformer_s12.pth.tar"


class _Server(http.server.ThreadingHTTPServer):
    """Serves files from ``root``; ``truncate`` makes it send half of each file
    while announcing the whole length, then hang up; ``hold`` (an Event) makes each
    response wait until it is set, keeping a download in flight."""

    def __init__(self, root):
        self.root, self.requests, self.truncate, self.hold = root, [], False, None
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
        if server.hold is not None:
            server.hold.wait(timeout=120)
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
    server.truncate, server.hold = False, None
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/")
    return server


def cache_files():
    """The cache's entries, less the per-variant lock files (kept on purpose)."""
    folder = pretrained.cache_dir()
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [name for name in names if not name.endswith(".lock")]


def test_first_load_downloads_and_converts_second_load_asks_nothing(mirror):
    torch_model, _ = reference("s12")
    model = kp.PoolFormerS12(weights="imagenet", classifier_activation=None)
    assert mirror.requests == ["/" + FILENAME]
    assert cache_files() == sorted([FILENAME, "poolformer_s12.json", "poolformer_s12.npz"])

    pixels = imagenet_val_images(4, (224, 224))
    theirs = reference_logits(torch_model, torchvision_normalize(pixels))
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
    converted = os.path.join(pretrained.cache_dir(), "poolformer_s12.npz")
    with open(converted, "r+b") as f:  # flip bytes in the middle of the weights
        f.seek(os.path.getsize(converted) // 2)
        f.write(b"\x00\x01\x02\x03" * 16)
    with pytest.raises(ValueError, match="corrupted: sha256"):
        kp.PoolFormerS12(weights="imagenet")
    assert "poolformer_s12.npz" not in cache_files()
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
    assert "poolformer_s12.npz" in cache_files()


def test_offline_without_cache_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, "http://127.0.0.1:9/")  # nothing listens
    with pytest.raises(pretrained.WeightsUnavailableError) as info:
        kp.PoolFormerS24(weights="imagenet")
    message = str(info.value)
    assert pretrained.RELEASE_URL + "poolformer_s24.pth.tar" in message
    assert os.path.join(str(tmp_path / "keras"), "models", "keras_poolformer") in message
    assert pretrained.MIRROR_ENV in message


def test_a_download_that_does_not_read_is_removed_and_fetched_again(
    mirror, served, tmp_path, monkeypatch
):
    """One byte flipped in the mirror's file (same size): a clear error, nothing kept,
    and once the mirror serves the right file again the next load heals the cache."""
    _, root = served
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = bytearray((root / FILENAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / FILENAME).write_bytes(bytes(data))
    monkeypatch.setenv(pretrained.MIRROR_ENV, damaged.as_uri() + "/")
    with pytest.raises(ValueError, match="has been removed; the next load downloads it again"):
        kp.PoolFormerS12(weights="imagenet")
    assert cache_files() == []

    monkeypatch.setenv(pretrained.MIRROR_ENV, f"http://127.0.0.1:{mirror.server_port}/")
    model = kp.PoolFormerS12(weights="imagenet", classifier_activation=None)
    assert mirror.requests == ["/" + FILENAME]
    _, state = reference("s12")
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), state["head.bias"])


def test_leftovers_of_a_killed_fetch_are_removed(mirror):
    os.makedirs(pretrained.cache_dir())
    leftover = os.path.join(pretrained.cache_dir(), f".{FILENAME}.x1y2z3.part.pth.tar")
    with open(leftover, "wb") as f:
        f.write(b"half a download")
    kp.PoolFormerS12(weights="imagenet")
    assert not os.path.exists(leftover)


_LOAD = """
import sys
import numpy as np
import keras_poolformer as kp
model = kp.PoolFormerS12(weights="imagenet")
np.save(sys.argv[1], model.get_layer("head").kernel.numpy())
"""


def test_two_processes_racing_on_a_first_load_both_succeed(mirror, tmp_path):
    """Two processes load S12's ImageNet weights into one empty cache at once. The
    server holds the first download open until the other process is either waiting
    for it (the lock works) or has asked for the file itself (it does not), so the
    two always overlap: both must succeed, with one download between them."""
    hold = threading.Event()
    mirror.hold = hold
    env = {
        **os.environ,
        "KERAS_HOME": os.environ["KERAS_HOME"],
        pretrained.MIRROR_ENV: os.environ[pretrained.MIRROR_ENV],
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD, str(tmp_path / f"head{i}.npy")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    stderr = [[], []]

    def read(i):
        for line in processes[i].stderr:
            stderr[i].append(line)
            if "Waiting for another process" in line:
                hold.set()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(2)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 300
    while not hold.wait(0.1):
        if (
            len(mirror.requests) >= 2
            or any(p.poll() is not None for p in processes)
            or time.monotonic() > deadline
        ):
            hold.set()  # no lock: both are downloading (or one died); let them finish
    for process in processes:
        process.wait(timeout=600)
    for reader in readers:
        reader.join(timeout=10)
    for i, process in enumerate(processes):
        assert process.returncode == 0, "".join(stderr[i])[-3000:]
    assert mirror.requests == ["/" + FILENAME]
    assert sum("Waiting for another process" in "".join(err) for err in stderr) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "head0.npy"), np.load(tmp_path / "head1.npy"))
    assert cache_files() == sorted([FILENAME, "poolformer_s12.json", "poolformer_s12.npz"])


def test_a_cache_from_before_the_npz_format_converts_again_and_drops_the_old_file(mirror):
    # Earlier releases of this library cached PoolFormer v1 as Keras .weights.h5 next to
    # the download: the download is reused (no request) and the old file goes.
    kp.PoolFormerS12(weights="imagenet")
    folder = pretrained.cache_dir()
    os.remove(os.path.join(folder, "poolformer_s12.npz"))
    old = os.path.join(folder, "poolformer_s12.weights.h5")
    with open(old, "wb") as f:
        f.write(b"converted by an earlier version")
    mirror.requests.clear()
    kp.PoolFormerS12(weights="imagenet")
    assert mirror.requests == []
    assert cache_files() == sorted([FILENAME, "poolformer_s12.json", "poolformer_s12.npz"])

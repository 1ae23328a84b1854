"""``weights="imagenet"``: the official checkpoints, downloaded, converted, verified, cached.

The only ImageNet weights that exist are the authors' PyTorch release files. The
first ``weights="imagenet"`` of a variant downloads its file, converts it with the
torch-free reader (no pickled code runs), and caches its tensors in the official
layout, as ``.npz`` (read with ``allow_pickle=False``), under the Keras cache folder
(``$KERAS_HOME``, else ``~/.keras``); every ``include_top``, ``pooling`` and input
size of the model loads from it, checked before the model is built::

    <cache>/models/keras_poolformer/poolformer_s12.pth.tar       the download
    <cache>/models/keras_poolformer/poolformer_s12.npz           the converted tensors
    <cache>/models/keras_poolformer/poolformer_s12.json          their sha256 record

Later loads read the cache with no network and no reconversion, after checking the
converted file against its recorded sha256. A download is checked against a pinned
sha256 where one is known (``SHA256``; the authors published none); every file is
written under a temporary name and renamed only when complete.

The cache heals itself: a download that does not read or convert is removed (the next
load downloads it again), and so is a converted file that fails its sha256. Several
processes may load the same variant for the first time at once: a per-variant file lock
(``.poolformer_s12.lock``) makes one of them download and convert while the others wait,
then read the verified result.

``KERAS_POOLFORMER_MIRROR`` (an ``http(s)://`` or ``file://`` base URL) replaces
the release location, for mirrors and air-gapped sites; a mirror serves each file
under the same relative path as its release.

The MetaFormer baselines (``weights="imagenet"`` or a tag such as
``"in22k_ft_in1k_384"``; :func:`baseline_release`) and the v1 hybrids
(:func:`hybrid_release`) go the same way, through :func:`fetch`. Their release files
are official-layout state dicts, and the cache keeps them as official-layout ``.npz``
files (read with ``allow_pickle=False``) that every ``include_top``, ``pooling`` and
input size of the model loads from, checked before the model is built::

    <cache>/caformer_s18_384.pth                the download (<family>/<file> on the
                                                release, https://huggingface.co/sail/dl/
                                                resolve/main/, and on a mirror)
    <cache>/caformer_s18.in1k_384.npz           the converted state dict
    <cache>/caformer_s18.in1k_384.json          its sha256 record
    <cache>/.caformer_s18.in1k_384.lock         the per-checkpoint lock
    <cache>/metaformer_pppa_s12_224.pth.tar     a hybrid's download (the v1 release)
    <cache>/metaformer_pppa_s12.npz, .json      its converted state dict and record
"""

import contextlib
import dataclasses
import glob
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.request

import numpy as np

from keras_poolformer import files, porting

RELEASE_URL = "https://github.com/sail-sg/poolformer/releases/download/v1.0/"
# Where the MetaFormer baselines' release files are (sail-sg/metaformer's README).
BASELINES_URL = "https://huggingface.co/sail/dl/resolve/main/"
MIRROR_ENV = "KERAS_POOLFORMER_MIRROR"
FILENAMES = {key: f"poolformer_{key}.pth.tar" for key in ("s12", "s24", "s36", "m36", "m48")}
# sha256 of the release files, where known. Nobody has published them; a user who
# has verified a file can pin it here. Unpinned downloads are recorded on first use.
SHA256 = {}


class WeightsUnavailableError(OSError):
    """The pretrained weights are neither cached nor downloadable right now."""


def cache_dir():
    """The folder where ImageNet weights are kept."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", "keras_poolformer")


def source_url(variant):
    """Where PoolFormer-``variant``'s release file is fetched from (mirror or release)."""
    return _source_url(_v1_release(variant))


class _Progress:
    """Download progress on stderr (stdout stays clean for the results): a live bar
    on a terminal, a plain line every quarter in a log."""

    def __init__(self, total):
        self.total, self.live, self.shown = total, sys.stderr.isatty(), 0

    def update(self, received):
        if not self.total:
            return
        fraction = received / self.total
        text = f"{received / 1e6:8.1f} / {self.total / 1e6:.1f} MB ({fraction:4.0%})"
        if self.live:
            bar = "#" * int(30 * fraction)
            print(f"\r  [{bar:<30}] {text}", end="", file=sys.stderr, flush=True)
            if received >= self.total:
                print(file=sys.stderr)
        elif fraction >= self.shown / 4:
            print(f"  {text}", file=sys.stderr, flush=True)
            self.shown = int(fraction * 4) + 1


def _download(url, path):
    """Downloads ``url`` to ``path`` atomically, with progress, refusing short reads."""
    print(f"Downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, files.atomic_path(path) as tmp:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            progress = _Progress(total)
            received = 0
            with open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
                    received += len(block)
                    progress.update(received)
            if total is not None and received != total:
                raise WeightsUnavailableError(
                    f"download of {url} stopped after {received:,} of {total:,} bytes"
                )
    except WeightsUnavailableError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        # URLError: no network or a bad URL; IncompleteRead: the connection dropped.
        raise WeightsUnavailableError(f"could not download {url}: {error!r}") from None


@dataclasses.dataclass(frozen=True)
class Release:
    """One release file and where its converted form is cached.

    Attributes:
        stem: the cache entries' name (``"poolformer_s12"``, ``"caformer_s18.in1k"``,
            ``"metaformer_pppa_s12"``): ``<stem>.json``, ``.<stem>.lock`` and the
            converted ``<stem><suffix>``.
        relative: the file's path under the release base (``"poolformer_s12.pth.tar"``,
            ``"caformer/caformer_s18_384.pth"``); a mirror serves the same path.
        release_url: the release base URL.
        title: for messages (``"PoolFormer-S12"``, ``"CAFormerS18 (in1k)"``).
        suffix: the converted file's suffix, ``".npz"`` (an official-layout state dict).
        convert: ``convert(source, converted)`` writes the converted file (to a
            temporary path given as ``converted``), raising on a bad source.
        sha256: the release file's pinned sha256, where known.
    """

    stem: str
    relative: str
    release_url: str
    title: str
    suffix: str
    convert: object
    sha256: str | None = None

    @property
    def source_name(self):
        return os.path.basename(self.relative)


def _record_path(release):
    return os.path.join(cache_dir(), f"{release.stem}.json")


def _converted_path(release):
    return os.path.join(cache_dir(), release.stem + release.suffix)


def _verified_cache(release):
    """The cached converted weights if present and intact, else ``None``.

    A converted file whose sha256 differs from its record is removed (with its
    record) and reported: it never loads.
    """
    converted, record_path = _converted_path(release), _record_path(release)
    if not os.path.isfile(converted):
        return None
    try:
        with open(record_path, encoding="utf-8") as f:
            recorded = json.load(f)["converted_sha256"]
    except (OSError, ValueError, KeyError):
        recorded = None  # converted without a record: not trusted, converted again
    actual = files.sha256(converted)
    if recorded == actual:
        return converted
    for path in (converted, record_path):
        if os.path.exists(path):
            os.remove(path)
    if recorded is None:
        return None
    raise ValueError(
        f"the cached ImageNet weights '{converted}' are corrupted: sha256 {actual}, "
        f"recorded {recorded}. The file has been removed; the next load converts again."
    )


def _source_url(release):
    base = os.environ.get(MIRROR_ENV) or release.release_url
    return base.rstrip("/") + "/" + release.relative


def _fetch_source(release):
    """The verified release checkpoint in the cache, downloading it if needed."""
    source = os.path.join(cache_dir(), release.source_name)
    url = _source_url(release)
    if not os.path.isfile(source):
        try:
            _download(url, source)
        except WeightsUnavailableError as error:
            raise WeightsUnavailableError(
                f"{error}\nThe pretrained weights of {release.title} are not cached. "
                f"Download {release.release_url}{release.relative} yourself and put it at "
                f"{source}, or set {MIRROR_ENV} to a base URL (http(s):// or file://) that "
                f"serves {release.relative}."
            ) from None
    digest = files.sha256(source)
    pinned = release.sha256
    if pinned and digest != pinned:
        os.remove(source)
        raise ValueError(
            f"'{source}' (from {url}) has sha256 {digest}, not the pinned {pinned}; it "
            "has been removed."
        )
    return source, digest, url


@contextlib.contextmanager
def _variant_lock(release):
    """Holds an exclusive lock on ``release``'s cache entries, across processes.

    The lock file is never removed: removing it would let two processes lock two
    different files of the same name.
    """
    os.makedirs(cache_dir(), exist_ok=True)
    path = os.path.join(cache_dir(), f".{release.stem}.lock")
    with open(path, "a+b") as handle:
        if not _try_lock(handle):
            print(
                f"Waiting for another process that is fetching {release.title}'s "
                "pretrained weights...",
                file=sys.stderr,
                flush=True,
            )
            _try_lock(handle, block=True)
        try:
            yield
        finally:
            _unlock(handle)


if os.name == "nt":  # pragma: no cover (the project's machines are POSIX)
    import msvcrt

    def _try_lock(handle, block=False):
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if block else msvcrt.LK_NBLCK, 1)
        except OSError:
            if block:
                raise
            return False
        return True

    def _unlock(handle):
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle, block=False):
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _unlock(handle):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(release):
    """Removes temporaries (``files.atomic_path``'s ``.part`` files) of this release's
    cache entries that a killed process left behind; called with the lock held, when no
    process can be writing them."""
    for name in (release.stem, release.source_name):
        for path in glob.glob(os.path.join(cache_dir(), f".{glob.escape(name)}.*.part*")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _convert_v1(variant):
    def convert(source, converted):
        from keras_poolformer import poolformer_table
        from keras_poolformer.convert.layouts import to_official
        from keras_poolformer.convert.reader import read_checkpoint

        state, _ = to_official(read_checkpoint(source))
        config = poolformer_table.variant_configs()[variant]
        expected = porting.official_shapes(config["depths"], config["dims"])
        porting.check_state_dict(state, expected, f"PoolFormer-{variant.upper()}")
        _write_npz({k: state[k] for k in expected}, converted)

    return convert


def _v1_release(variant):
    if variant not in FILENAMES:
        raise ValueError(f"no ImageNet weights for '{variant}'; there are {sorted(FILENAMES)}.")
    return Release(
        stem=f"poolformer_{variant}",
        relative=FILENAMES[variant],
        release_url=RELEASE_URL,
        title=f"PoolFormer-{variant.upper()}",
        suffix=".npz",
        convert=_convert_v1(variant),
        sha256=SHA256.get(variant),
    )


def imagenet_weights(variant):
    """Path of the verified ImageNet weights of ``variant`` ("s12"...), an
    official-layout ``.npz``, downloading and converting them on first use.

    Safe to call from several processes at once: one fetches, the others wait for it.

    Raises:
        WeightsUnavailableError: not cached and the download failed; the message
            says what to download and where to put it.
        ValueError: a download or cache file failed its sha256 check, or the
            downloaded checkpoint does not read or convert; either way the bad file
            has been removed, and the next call fetches it again.
    """
    return fetch(_v1_release(variant))


def fetch(release):
    """Path of ``release``'s verified converted file, downloading and converting it on
    first use (see :func:`imagenet_weights`, which this generalises)."""
    with _variant_lock(release):
        _remove_leftovers(release)
        cached = _verified_cache(release)
        if cached:
            return cached
        return _fetch_and_convert(release)


def _fetch_and_convert(release):
    """Downloads (if needed), converts and records ``release``; the lock is held."""
    source, source_digest, url = _fetch_source(release)
    converted = _converted_path(release)
    try:
        with files.atomic_path(converted) as tmp:
            release.convert(source, tmp)
    except Exception as error:  # any failure to read or convert: never keep the file
        for path in (source, converted):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        raise ValueError(
            f"the downloaded '{source}' (from {url}) is not a valid {release.title} "
            f"checkpoint and has been removed; the next load downloads it again. "
            f"{_first_line(error)}"
        ) from None
    record = {
        "model": release.stem,
        "source_url": url,
        "source_sha256": source_digest,
        "converted_sha256": files.sha256(converted),
    }
    with files.atomic_path(_record_path(release)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    # Releases converted before the official-layout .npz cache kept Keras weights; the
    # record that vouched for them is replaced above, so they go.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(cache_dir(), release.stem + ".weights.h5"))
    return converted


# --- the MetaFormer baselines and the v1 hybrids ---------------------------------------
#
# Their release files are official-layout state dicts; the cache keeps them converted to
# an official-layout ``.npz`` of float32 arrays (read with ``allow_pickle=False``), which
# every input size, ``include_top`` and ``pooling`` of the model loads from, checked
# before the model is built.


def _write_npz(state, path):
    with open(path, "wb") as f:
        np.savez(f, **state)


def _convert_baseline(name, checkpoint):
    def convert(source, converted):
        from keras_poolformer import registry
        from keras_poolformer.baselines import layout
        from keras_poolformer.convert.layouts import baseline_to_official
        from keras_poolformer.convert.reader import read_checkpoint

        state, _ = baseline_to_official(read_checkpoint(source))
        spec = registry.get(name)
        expected = layout.official_shapes(
            spec.config, checkpoint.classes, image_size=checkpoint.resolution
        )
        porting.check_state_dict(state, expected, f"{spec.constructor} ({checkpoint.tag})")
        _write_npz({k: state[k] for k in expected}, converted)

    return convert


def baseline_release(name, tag="in1k"):
    """The :class:`Release` of the baseline ``name``'s checkpoint ``tag`` (``ValueError``
    listing the tags it has)."""
    from keras_poolformer import registry

    spec = registry.get(name)
    checkpoint = spec.checkpoint(tag)
    if not checkpoint.url.startswith(BASELINES_URL):
        raise ValueError(f"{name} ({tag}): unexpected release URL {checkpoint.url}")
    return Release(
        stem=f"{name}.{tag}",
        relative=checkpoint.url[len(BASELINES_URL) :],
        release_url=BASELINES_URL,
        title=f"{spec.constructor} ({tag})",
        suffix=".npz",
        convert=_convert_baseline(name, checkpoint),
    )


def _convert_hybrid(key):
    def convert(source, converted):
        from keras_poolformer.convert import hybrids
        from keras_poolformer.convert.reader import read_checkpoint

        state = read_checkpoint(source)
        expected = hybrids.official_shapes(key, 1000)
        porting.check_state_dict(state, expected, hybrids.NAMES[key])
        _write_npz({k: state[k] for k in expected}, converted)

    return convert


def hybrid_release(key):
    """The :class:`Release` of the v1 hybrid ``key``'s ImageNet checkpoint (``"pppa_s12"``...)."""
    from keras_poolformer.convert import hybrids

    if key not in hybrids.FILENAMES:
        raise ValueError(f"no ImageNet weights for '{key}'; there are {sorted(hybrids.FILENAMES)}.")
    return Release(
        stem=hybrids.NAMES[key],
        relative=hybrids.FILENAMES[key],
        release_url=hybrids.RELEASE_URL,
        title=hybrids.NAMES[key],
        suffix=".npz",
        convert=_convert_hybrid(key),
    )


def read_state(path):
    """The official-layout state dict in a verified converted ``.npz`` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def clear_cache():
    """Removes every cached download and converted file."""
    shutil.rmtree(cache_dir(), ignore_errors=True)

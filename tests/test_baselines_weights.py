"""Pretrained weights for the MetaFormer baselines and the v1 hybrids: weights="imagenet"
and checkpoint tags through a file:// mirror, weights=<checkpoint> in the official and
timm layouts, the converter on both layouts, and the refusals.

The baselines' reference is tests/timm_reference.py (timm, seeded random weights, the
official epsilon 1e-5 in the MLP heads). The hybrids' reference is written here: a
functional PyTorch forward of sail-sg/poolformer's ``models/metaformer.py`` over its own
state-dict keys, independent of the package. All offline; real ImageNet images.
"""

import json
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
from conftest import imagenet_val_images
from reference import torchvision_normalize
from timm_reference import (
    official_state_dict,
    reference_logits,
    reference_model,
    save_state_dict,
    timm_state_dict,
    uses_mlp_head,
)

import keras_poolformer as kp
from keras_poolformer import cli, files, pretrained
from keras_poolformer.convert import CheckpointError, UnsafeCheckpointError, convert_checkpoint

torch = pytest.importorskip("torch")
TOLERANCE = 1e-4
SIZE = 224


@pytest.fixture(scope="module")
def images():
    return imagenet_val_images(3, (SIZE, SIZE))


_REFERENCES = {}


def reference(name):
    """(timm model, official state, timm state) for a baseline, once per module."""
    if name not in _REFERENCES:
        eps = 1e-5 if uses_mlp_head(name) else None
        model = reference_model(name, seed=3, head_norm_eps=eps)
        _REFERENCES[name] = (model, official_state_dict(name, model), timm_state_dict(model))
    return _REFERENCES[name]


def max_diff(model, logits, images):
    ours = np.asarray(model.predict(images, verbose=0))
    return float(np.abs(ours - logits).max())


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """An empty mirror folder reached through file://, and an empty Keras cache."""
    root = tmp_path / "mirror"
    root.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(pretrained.MIRROR_ENV, root.as_uri())
    return root


# --- weights="imagenet" and tags -------------------------------------------------------


def test_caformer_imagenet_downloads_converts_caches_and_matches(mirror, images, capfd):
    torch_model, official, _ = reference("caformer_s18")
    (mirror / "caformer").mkdir()
    source = save_state_dict(official, mirror / "caformer" / "caformer_s18.pth")
    expected = reference_logits(torch_model, torchvision_normalize(images))

    model = kp.CAFormerS18(classifier_activation=None)  # weights="imagenet" by default
    assert "Downloading file://" in capfd.readouterr().err
    diff = max_diff(model, expected, images)
    assert diff < TOLERANCE, diff

    cache = pretrained.cache_dir()
    with open(os.path.join(cache, "caformer_s18.in1k.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert record["source_sha256"] == files.sha256(source)
    assert record["converted_sha256"] == files.sha256(os.path.join(cache, "caformer_s18.in1k.npz"))
    assert record["source_url"].endswith("/caformer/caformer_s18.pth")

    shutil.rmtree(mirror)  # a second load needs no download
    again = kp.CAFormerS18(weights="in1k", classifier_activation=None)
    assert "Downloading" not in capfd.readouterr().err
    assert max_diff(again, expected, images) < TOLERANCE


def test_tags_choose_the_file_the_classes_and_the_input_size(mirror, monkeypatch):
    _, official, _ = reference("poolformerv2_s12")
    (mirror / "poolformerv2").mkdir()
    save_state_dict(official, mirror / "poolformerv2" / "poolformerv2_s12.pth")
    with pytest.raises(ValueError, match=r"no checkpoint 'in21k'.*tags \(in1k\)"):
        kp.PoolFormerV2S12(weights="in21k")
    with pytest.raises(ValueError, match=r"tags \(in1k, in1k_384, in22k_ft_in1k, "):
        kp.CAFormerS18(weights="imagenet21k")
    with pytest.raises(ValueError, match=r"needs classes=21841"):
        kp.CAFormerS18(weights="in22k")
    with pytest.raises(ValueError, match=r"needs classes=1000"):
        kp.PoolFormerV2S12(classes=10)
    # a headless model of another input size loads the same file
    model = kp.PoolFormerV2S12(include_top=False, input_shape=(96, 96, 3))
    assert model.output_shape == (None, 3, 3, 512)
    assert os.listdir(mirror / "poolformerv2") == ["poolformerv2_s12.pth"]


def test_a_384_tag_defaults_the_input_to_384(mirror):
    # ConvFormer has no size-bound weights: the 224 reference stands in for the 384 file.
    _, official, _ = reference("convformer_s18")
    (mirror / "convformer").mkdir()
    save_state_dict(official, mirror / "convformer" / "convformer_s18_384.pth")
    model = kp.ConvFormerS18(weights="in1k_384", classifier_activation=None)
    assert model.input_shape == (None, 384, 384, 3)
    # Without the top the input keeps any size, as Keras Applications' backbones do.
    backbone = kp.ConvFormerS18(weights="in1k_384", include_top=False)
    assert backbone.input_shape == (None, None, None, 3)
    assert os.path.isfile(os.path.join(pretrained.cache_dir(), "convformer_s18.in1k_384.npz"))


def test_a_corrupted_baseline_cache_is_removed_and_converted_again(mirror):
    _, official, _ = reference("poolformerv2_s12")
    (mirror / "poolformerv2").mkdir()
    save_state_dict(official, mirror / "poolformerv2" / "poolformerv2_s12.pth")
    release = pretrained.baseline_release("poolformerv2_s12")
    path = pretrained.fetch(release)
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    with pytest.raises(ValueError, match="corrupted"):
        pretrained.fetch(release)
    assert not os.path.exists(path)
    assert pretrained.fetch(release) == path  # converted again from the cached download
    state = pretrained.read_state(path)
    assert all(np.array_equal(state[k], official[k]) for k in official)


def test_a_damaged_baseline_download_is_removed(mirror):
    (mirror / "caformer").mkdir()
    (mirror / "caformer" / "caformer_s18.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"not a valid CAFormerS18 \(in1k\) checkpoint"):
        kp.CAFormerS18()
    assert not os.path.exists(os.path.join(pretrained.cache_dir(), "caformer_s18.pth"))


# --- the v1 hybrids: an independent reference of the official models/metaformer.py -----

# sail-sg/poolformer's metaformer_pppa_s12_224: pooling in stages 0-2, attention in 3, a
# position embedding (7 x 7) before stage 3, LayerNormChannel norms; 'network' holds the
# position embedding as a module, so stage 3 is network.7.
_PPPA_NETWORK = {0: 0, 1: 2, 2: 4, 3: 7}
_PPPA_DOWN = {1: 1, 2: 3, 3: 5}
_PPPA_POS = 6
_DEPTHS, _DIMS = (2, 2, 6, 2), (64, 128, 320, 512)


def pppa_state(seed=5, classes=1000):
    """Random official-layout weights of metaformer_pppa_s12_224, keyed by hand."""
    rng = np.random.default_rng(seed)

    def normal(*shape, fan_in=None):
        std = 1 / np.sqrt(fan_in or shape[-1])
        return rng.normal(0, std, shape).astype(np.float32)

    def near_one(n):
        return rng.uniform(0.8, 1.2, n).astype(np.float32)

    def small(n, scale=0.05):
        return rng.normal(0, scale, n).astype(np.float32)

    state = {"patch_embed.proj.weight": normal(64, 3, 7, 7, fan_in=147)}
    state["patch_embed.proj.bias"] = small(64)
    for s, (depth, dim) in enumerate(zip(_DEPTHS, _DIMS, strict=True)):
        if s:
            state[f"network.{_PPPA_DOWN[s]}.proj.weight"] = normal(
                dim, _DIMS[s - 1], 3, 3, fan_in=9 * _DIMS[s - 1]
            )
            state[f"network.{_PPPA_DOWN[s]}.proj.bias"] = small(dim)
        if s == 3:
            state[f"network.{_PPPA_POS}.pos_embed"] = small((1, dim, 7, 7), 0.2)
        for j in range(depth):
            p = f"network.{_PPPA_NETWORK[s]}.{j}."
            state[p + "layer_scale_1"] = near_one(dim)
            state[p + "layer_scale_2"] = near_one(dim)
            for n in ("norm1", "norm2"):
                state[p + n + ".weight"] = near_one(dim)
                state[p + n + ".bias"] = small(dim)
            if s == 3:
                state[p + "token_mixer.qkv.weight"] = normal(3 * dim, dim)
                state[p + "token_mixer.proj.weight"] = normal(dim, dim)
                state[p + "token_mixer.proj.bias"] = small(dim)
            state[p + "mlp.fc1.weight"] = normal(4 * dim, dim, 1, 1, fan_in=dim)
            state[p + "mlp.fc1.bias"] = small(4 * dim)
            state[p + "mlp.fc2.weight"] = normal(dim, 4 * dim, 1, 1, fan_in=4 * dim)
            state[p + "mlp.fc2.bias"] = small(dim)
    state["norm.weight"], state["norm.bias"] = near_one(512), small(512)
    state["head.weight"], state["head.bias"] = normal(classes, 512), small(classes)
    return state


def pppa_logits(state, normalized):
    """The official forward, functionally, in PyTorch (NCHW)."""
    f = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in state.items()}
    x = torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2)))

    def norm(x, p):  # LayerNormChannel: over channels at each position, eps 1e-5
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-5)
        return t[p + ".weight"][:, None, None] * x + t[p + ".bias"][:, None, None]

    def attention(x, p):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        heads = c // 32
        qkv = f.linear(tokens, t[p + "qkv.weight"]).reshape(b, h * w, 3, heads, 32)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * 32**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        out = f.linear(out, t[p + "proj.weight"], t[p + "proj.bias"])
        return out.transpose(1, 2).reshape(b, c, h, w)

    with torch.no_grad():
        x = f.conv2d(x, t["patch_embed.proj.weight"], t["patch_embed.proj.bias"], 4, 2)
        for s in range(4):
            if s:
                d = f"network.{_PPPA_DOWN[s]}.proj."
                x = f.conv2d(x, t[d + "weight"], t[d + "bias"], 2, 1)
            if s == 3:
                x = x + t[f"network.{_PPPA_POS}.pos_embed"]
            for j in range(_DEPTHS[s]):
                p = f"network.{_PPPA_NETWORK[s]}.{j}."
                y = norm(x, p + "norm1")
                if s == 3:
                    mixed = attention(y, p + "token_mixer.")
                else:
                    mixed = f.avg_pool2d(y, 3, 1, 1, count_include_pad=False) - y
                x = x + t[p + "layer_scale_1"][:, None, None] * mixed
                y = norm(x, p + "norm2")
                y = f.conv2d(y, t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"])
                y = f.conv2d(f.gelu(y), t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"])
                x = x + t[p + "layer_scale_2"][:, None, None] * y
        x = norm(x, "norm")
        return f.linear(x.mean((2, 3)), t["head.weight"], t["head.bias"]).numpy()


@pytest.fixture(scope="module")
def pppa():
    state = pppa_state()
    return state, lambda images: pppa_logits(state, torchvision_normalize(images))


def test_hybrid_imagenet_downloads_converts_caches_and_matches(mirror, images, pppa, capfd):
    state, logits = pppa
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, mirror / _PPPA_FILE)
    expected = logits(images)

    model = kp.MetaFormerPPPAS12(weights="imagenet", classifier_activation=None)
    assert "Downloading file://" in capfd.readouterr().err
    diff = max_diff(model, expected, images)
    assert diff < TOLERANCE, diff
    with open(os.path.join(pretrained.cache_dir(), "metaformer_pppa_s12.json")) as f:
        record = json.load(f)
    assert record["source_sha256"] == files.sha256(os.path.join(pretrained.cache_dir(), _PPPA_FILE))

    shutil.rmtree(mirror)
    again = kp.MetaFormerPPPAS12(weights="imagenet", classifier_activation=None)
    assert "Downloading" not in capfd.readouterr().err
    assert max_diff(again, expected, images) < TOLERANCE
    with pytest.raises(ValueError, match="needs classes=1000"):
        kp.MetaFormerPPPAS12(weights="imagenet", classes=10)


_PPPA_FILE = "metaformer_pppa_s12_224.pth.tar"


# --- the converter and weights=<checkpoint> --------------------------------------------


@pytest.mark.parametrize(
    "name, layout, suffix",
    [
        ("caformer_s18", "official", ".pth"),
        ("caformer_s18", "timm", ".safetensors"),
        ("convformer_s18", "official", ".safetensors"),
        ("convformer_s18", "timm", ".pth"),
        ("poolformerv2_s12", "official", ".pth"),
        ("poolformerv2_s12", "timm", ".safetensors"),
    ],
)
def test_convert_reads_both_layouts_and_matches_the_reference(
    name, layout, suffix, tmp_path, images
):
    torch_model, official, timm = reference(name)
    path = save_state_dict(official if layout == "official" else timm, tmp_path / (name + suffix))
    model, info = convert_checkpoint(path, tmp_path / "out.weights.h5")
    assert info["layout"] == layout and info["architecture"]["name"] == name
    expected = reference_logits(torch_model, torchvision_normalize(images))
    # the model ends with the softmax: compare its logits
    head = keras.Model(model.input, model.get_layer("head").output)
    diff = max_diff(head, expected, images)
    assert diff < TOLERANCE, (name, layout, diff)


def test_cli_convert_of_a_baseline_and_a_hybrid(tmp_path, images, pppa, capsys):
    torch_model, official, _ = reference("poolformerv2_s12")
    path = save_state_dict(official, tmp_path / "weights.pth")  # no family in the name
    out = tmp_path / "v2.weights.h5"
    assert cli.main(["convert", str(path), "--output", str(out)]) != 0
    assert "ambiguous" in capsys.readouterr().err and not out.exists()
    assert (
        cli.main(["convert", str(path), "--output", str(out), "--model", "poolformerv2_s12"]) == 0
    )
    assert "official layout, PoolFormerV2S12" in capsys.readouterr().out
    model = kp.PoolFormerV2S12(weights=out, classifier_activation=None)
    expected = reference_logits(torch_model, torchvision_normalize(images))
    assert max_diff(model, expected, images) < TOLERANCE

    state, logits = pppa
    hybrid = tmp_path / _PPPA_FILE
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, hybrid)
    out = tmp_path / "pppa.weights.h5"
    assert cli.main(["convert", str(hybrid), "--output", str(out)]) == 0
    assert "metaformer_pppa_s12" in capsys.readouterr().out
    model = kp.MetaFormerPPPAS12(weights=out, classifier_activation=None)
    assert max_diff(model, logits(images), images) < TOLERANCE
    refused = tmp_path / "refused.weights.h5"
    assert cli.main(["convert", str(hybrid), "--output", str(refused), "--verify"]) == 2
    assert "cannot check" in capsys.readouterr().err
    assert not refused.exists()


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_weights_path_in_either_layout(layout, tmp_path, images):
    torch_model, official, timm = reference("poolformerv2_s12")
    state = official if layout == "official" else timm
    path = save_state_dict(state, tmp_path / f"poolformerv2_s12_{layout}.safetensors")
    model = kp.PoolFormerV2S12(weights=path, classifier_activation=None)
    expected = reference_logits(torch_model, torchvision_normalize(images))
    assert max_diff(model, expected, images) < TOLERANCE
    headless = kp.PoolFormerV2S12(weights=path, include_top=False, pooling="avg")
    assert headless.output_shape == (None, 512)


def test_hybrid_weights_path(tmp_path, images, pppa):
    state, logits = pppa
    path = tmp_path / "pppa.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    model = kp.MetaFormerPPPAS12(weights=path, classifier_activation=None)
    assert max_diff(model, logits(images), images) < TOLERANCE
    with pytest.raises(ValueError, match=r"does not fit model 'metaformer_ppaa_s12'"):
        kp.MetaFormerPPAAS12(weights=path)


def test_bad_files_are_refused_before_building(tmp_path, monkeypatch):
    _, official, _ = reference("poolformerv2_s12")
    monkeypatch.setattr("keras_poolformer.baselines.builder.BaselineBlock", None)
    # another family's checkpoint
    path = save_state_dict(official, tmp_path / "v2.pth")
    with pytest.raises(ValueError, match=r"does not fit model 'convformer_s18'.*missing"):
        kp.ConvFormerS18(weights=path)
    # another size of the same family
    with pytest.raises(ValueError, match=r"does not fit model 'poolformerv2_s24'"):
        kp.PoolFormerV2S24(weights=path)
    # the classes differ
    with pytest.raises(ValueError, match=r"classifier for 1000 classes.*pass classes=1000"):
        kp.PoolFormerV2S12(weights=path, classes=10)
    # a PoolFormer v1 file
    v1 = {"patch_embed.proj.weight": np.zeros((64, 3, 7, 7), np.float32)}
    v1_path = save_state_dict(v1, tmp_path / "v1.pth")
    with pytest.raises(ValueError, match=r"no MetaFormer baseline.*PoolFormer v1 checkpoint"):
        kp.PoolFormerV2S12(weights=v1_path)
    # no such file, a damaged file
    with pytest.raises(ValueError, match=r"'missing\.pth' does not"):
        kp.PoolFormerV2S12(weights="missing.pth")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match="damaged.pth"):
        kp.PoolFormerV2S12(weights=damaged)


def test_the_pooling_identity_ambiguity_is_named(tmp_path):
    _, official, timm = reference("poolformerv2_s12")
    for state, suffix in ((official, ".pth"), (timm, ".safetensors")):
        path = save_state_dict(state, tmp_path / ("model" + suffix))
        with pytest.raises(CheckpointError, match=r"ambiguous: poolformerv2 and identityformer"):
            convert_checkpoint(path, tmp_path / "out.weights.h5")
    path = save_state_dict(official, tmp_path / "identityformer_s12.pth")
    _, info = convert_checkpoint(path, tmp_path / "out.weights.h5")
    assert info["architecture"]["name"] == "identityformer_s12"


def test_a_malicious_baseline_pickle_is_refused_unrun(tmp_path):
    from test_convert import _Exploit

    marker = tmp_path / "pwned"
    path = tmp_path / "caformer_s18.pth"
    exploit = _Exploit(f"touch {marker}")
    torch.save({"downsample_layers.0.conv.bias": torch.ones(64), "x": exploit}, path)
    assert b"system" in zipfile.ZipFile(path).read("caformer_s18/data.pkl")
    for load in (
        lambda: kp.CAFormerS18(weights=path),
        lambda: convert_checkpoint(path, tmp_path / "out.weights.h5"),
    ):
        with pytest.raises(UnsafeCheckpointError, match=r"system"):
            load()
    assert not marker.exists()


@pytest.mark.parametrize("key", sorted(kp.HYBRIDS))
def test_every_hybrid_layout_covers_its_model(key, tmp_path):
    """The official layout of each hybrid names every weight of the model once, with
    the official parameter count, and a checkpoint in it round-trips exactly."""
    from keras_poolformer.convert import hybrids

    model = kp.HYBRIDS[key](weights=None)
    exported = hybrids.export_state_dict(model, key)
    shapes = hybrids.official_shapes(key)
    assert {k: v.shape for k, v in exported.items()} == shapes
    assert sum(int(np.prod(s)) for s in shapes.values()) == kp.HYBRID_CONFIGS[key]["params"]
    assert len(model.weights) == len(exported)
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    path = tmp_path / hybrids.FILENAMES[key]
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    loaded = kp.HYBRIDS[key](weights=path)
    again = hybrids.export_state_dict(loaded, key)
    assert all(np.array_equal(again[k], state[k]) for k in state)

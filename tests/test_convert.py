"""The torch-free checkpoint reader, the layouts, and weights=<checkpoint>."""

import argparse
import os
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import TINY, imagenet_val_images, reference
from reference import reference_logits, torchvision_normalize

import keras_poolformer as kp
from keras_poolformer.convert import (
    UnsafeCheckpointError,
    convert_checkpoint,
    detect_layout,
    infer_architecture,
    read_checkpoint,
    to_official,
)
from keras_poolformer.convert.reader import _as_strided_copy

torch = pytest.importorskip("torch")


def torch_save(state, path):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, path)
    return path


def timm_state(official):
    """The official state dict under timm's names (written here, independently of the
    converter's rules): stem.conv, stages.S.blocks.J, layer_scaleK.scale (C, 1, 1),
    stages.S.downsample.conv, head.norm, head.fc."""
    out = {}
    for key, value in official.items():
        parts = key.split(".")
        if key.startswith("patch_embed.proj."):
            new = "stem.conv." + parts[-1]
        elif parts[0] == "network" and int(parts[1]) % 2 == 1:
            new = f"stages.{(int(parts[1]) + 1) // 2}.downsample.conv.{parts[-1]}"
        elif parts[0] == "network":
            stage, block, rest = int(parts[1]) // 2, parts[2], ".".join(parts[3:])
            if rest.startswith("layer_scale_"):
                rest, value = f"layer_scale{rest[-1]}.scale", value.reshape(-1, 1, 1)
            new = f"stages.{stage}.blocks.{block}.{rest}"
        else:
            new = {"norm": "head.norm", "head": "head.fc"}[parts[0]] + "." + parts[-1]
        out[new] = value
    return out


@pytest.fixture(scope="module")
def s12_files(tmp_path_factory):
    """The same random S12 weights in every layout and container we read."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("checkpoints")
    torch_model, state = reference("s12")
    files = {
        "official .pth.tar": torch_save(state, folder / "poolformer_s12.pth.tar"),
        "official .npz": folder / "poolformer_s12.npz",
        "timm .safetensors": folder / "model.safetensors",
        "transformers folder (safetensors)": folder / "hf",
        "transformers folder (pytorch_model.bin)": folder / "hf_bin",
        "training checkpoint": folder / "checkpoint.pth.tar",
    }
    np.savez(files["official .npz"], **state)
    save_file(timm_state(state), str(files["timm .safetensors"]))
    torch_model.save_pretrained(files["transformers folder (safetensors)"])
    torch_model.save_pretrained(
        files["transformers folder (pytorch_model.bin)"], safe_serialization=False
    )
    # What timm's train.py saves: a wrapper with DDP's module. prefix and metadata.
    torch.save(
        {
            "epoch": 299,
            "arch": "poolformer_s12",
            "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()},
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []},
            "args": argparse.Namespace(lr=4e-3, model="poolformer_s12"),
            "metric": np.float64(77.2),
        },
        files["training checkpoint"],
    )
    return files


def test_every_layout_loads_to_identical_weights_that_match_the_reference(s12_files):
    torch_model, state = reference("s12")
    pixels = imagenet_val_images(4, (224, 224))
    theirs = reference_logits(torch_model, torchvision_normalize(pixels))
    first = None
    for what, path in s12_files.items():
        model = kp.PoolFormerS12(weights=path, classifier_activation=None)
        weights = [w.numpy() for w in model.weights]
        if first is None:
            first = weights
        for a, b in zip(first, weights, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=what)
        assert np.abs(model(pixels).numpy() - theirs).max() <= 1e-4, what


def test_layouts_are_detected(s12_files):
    expected = ["official", "official", "timm", "transformers", "transformers", "official"]
    found = [detect_layout(read_checkpoint(path)) for path in s12_files.values()]
    assert found == expected


def test_headless_model_takes_everything_but_the_classifier(s12_files):
    model = kp.PoolFormerS12(weights=s12_files["timm .safetensors"], include_top=False)
    _, state = reference("s12")
    np.testing.assert_array_equal(model.get_layer("norm").gamma.numpy(), state["norm.weight"])


def test_reader_handles_dtypes_views_and_parameters(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    original = {
        "half": torch.linspace(-2, 2, 5).half(),
        "bfloat16": torch.linspace(-2, 2, 5).bfloat16(),
        "transposed": base.t(),  # non-contiguous view
        "row": base[1],  # a view at an offset into a shared storage
        "whole": base,
        "parameter": torch.nn.Parameter(torch.ones(2)),
        "ints": torch.tensor([1, 2, 3]),
    }
    torch.save(original, tmp_path / "x.pth")
    state = read_checkpoint(tmp_path / "x.pth")
    for key, tensor in original.items():
        expected = tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()
        np.testing.assert_array_equal(state[key], expected, err_msg=key)
    assert state["half"].dtype == np.float32 and state["bfloat16"].dtype == np.float32
    assert state["ints"].dtype == np.int64


def test_tensor_views_cannot_read_outside_their_storage():
    storage = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(_as_strided_copy(storage, 2, (2, 2), (3, 1)), [[2, 3], [5, 6]])
    with pytest.raises(ValueError, match="runs past its storage"):
        _as_strided_copy(storage, 5, (3, 3), (3, 1))
    with pytest.raises(ValueError, match="invalid tensor view"):
        _as_strided_copy(storage, 0, (2,), (-1,))


class _Exploit:
    """Unpickling this runs ``os.system`` with the reducer's argument."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def run_in_child(code, *args, **kwargs):
    """Runs ``code`` in a fresh Python process: an untrusted pickle is only ever
    loaded unrestricted there, never in the test process."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, timeout=300, **kwargs
    )


@pytest.mark.parametrize("loader", ["read_checkpoint", "constructor"])
def test_a_pickle_naming_a_dangerous_global_is_refused_unrun(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "poolformer_s12.pth"
    # A real torch file whose pickle holds a call to os.system next to a real tensor.
    exploit = _Exploit(f"touch {shlex.quote(str(marker))}")
    torch.save({"patch_embed.proj.bias": torch.ones(64), "x": exploit}, path)
    assert b"system" in zipfile.ZipFile(path).read("poolformer_s12/data.pkl")

    # Positive control, in a child process: an unrestricted load runs the payload.
    assert not marker.exists()
    child = run_in_child(
        "import sys, torch\n"
        "state = torch.load(sys.argv[1], weights_only=False)\n"
        "print(sorted(state), state['x'])\n",
        path,
        text=True,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "['patch_embed.proj.bias', 'x'] 0" in child.stdout  # os.system's exit status
    assert marker.exists(), "the payload did not run under torch.load(weights_only=False)"
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match=r"'(posix|os)\.system'.*nothing in it was run"):
        if loader == "read_checkpoint":
            read_checkpoint(path)
        else:
            kp.PoolFormerS12(weights=path)
    assert not marker.exists()


def test_other_globals_are_refused_too(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        payload = b"cbuiltins\neval\n(S'1+1'\ntR."  # protocol-0 pickle: eval('1+1')
        archive.writestr("evil/data.pkl", payload)
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        read_checkpoint(path)
    # The payload is real: unrestricted (in a child process), it runs.
    child = run_in_child(
        "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()))", input=payload
    )
    assert (child.returncode, child.stdout.strip()) == (0, b"2"), child.stderr


def test_a_checkpoint_of_another_variant_is_named_before_building(tmp_path, monkeypatch):
    config = kp.MODEL_CONFIGS["s24"]
    shapes = kp.porting.official_shapes(config["depths"], config["dims"])
    state = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    path = torch_save(state, tmp_path / "s24.pth")
    monkeypatch.setattr("keras_poolformer.models.PoolFormerBlock", None)  # nothing is built
    with pytest.raises(
        ValueError, match=r"(?s)120 unexpected.*official layout\) holds PoolFormer-S24"
    ):
        kp.PoolFormerS12(weights=path)


def test_every_misfit_is_listed_in_one_error(tmp_path):
    model = kp.PoolFormer(**TINY, weights=None)
    state = kp.porting.export_state_dict(model)
    del state["network.0.0.norm1.bias"]
    state["network.2.0.mlp.fc2.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    state["extra.weight"] = np.zeros(1, np.float32)
    path = torch_save(state, tmp_path / "tiny.pth")
    with pytest.raises(ValueError) as info:
        kp.PoolFormer(**TINY, weights=path)
    message = str(info.value)
    assert "1 missing" in message and "network.0.0.norm1.bias" in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert "network.2.0.mlp.fc2.weight: checkpoint (3, 3, 1, 1), model (16, 64, 1, 1)" in message


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"", ".pth", "not a PyTorch zip checkpoint"),
        (b"garbage", ".safetensors", "not a readable safetensors file"),
        (b"garbage", ".npz", "not a readable .npz file"),
        (b"garbage", ".ckpt2", "unknown checkpoint kind"),
    ],
)
def test_damaged_or_unknown_files_are_named(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_checkpoint(path)


def test_infer_architecture_reads_every_variant():
    for key, config in kp.MODEL_CONFIGS.items():
        shapes = kp.porting.official_shapes(config["depths"], config["dims"], classes=10)
        arch = infer_architecture({k: np.empty(s, np.float32) for k, s in shapes.items()})
        assert (arch["variant"], arch["classes"], arch["mlp_ratio"]) == (key, 10, 4.0)


def test_timm_and_transformers_rules_cover_every_key():
    """Every key of a timm and of a transformers checkpoint maps to its official key,
    with the same values. The transformers checkpoints are the reference model's own
    state dicts: the classifier's (``poolformer.encoder.*``, ``norm.*``,
    ``classifier.*``) and its bare trunk's (``encoder.*``, as ``PoolFormerModel``
    saves it, without the final norm and the classifier)."""
    torch_model, state = reference("s12")
    transformers_state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    trunk_state = {k: v.numpy() for k, v in torch_model.poolformer.state_dict().items()}
    head = {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    cases = [
        ("timm", timm_state(state), set(state)),
        ("transformers", transformers_state, set(state)),
        ("transformers", trunk_state, set(state) - head),
    ]
    for expected_layout, foreign, keys in cases:
        assert len(foreign) == len(keys), expected_layout  # one foreign key per official key
        official, layout = to_official(foreign)
        assert layout == expected_layout
        assert sorted(official) == sorted(keys), expected_layout
        for key in keys:
            np.testing.assert_array_equal(official[key], state[key], err_msg=key)


def test_convert_writes_keras_files(s12_files, tmp_path):
    source = s12_files["timm .safetensors"]
    _, info = convert_checkpoint(source, tmp_path / "s12.weights.h5")
    assert info["layout"] == "timm" and info["architecture"]["variant"] == "s12"
    from_h5 = kp.PoolFormerS12(weights=tmp_path / "s12.weights.h5", classifier_activation=None)
    import keras

    convert_checkpoint(source, tmp_path / "s12.keras")
    from_keras = keras.saving.load_model(tmp_path / "s12.keras")
    pixels = imagenet_val_images(2, (224, 224))
    np.testing.assert_allclose(
        keras.Model(from_keras.input, from_keras.get_layer("head").output)(pixels).numpy(),
        from_h5(pixels).numpy(),
        atol=1e-6,
    )
    assert sorted(os.listdir(tmp_path)) == ["s12.keras", "s12.weights.h5"]  # no leftovers
    with pytest.raises(ValueError, match="not PoolFormer-S24"):
        convert_checkpoint(source, tmp_path / "x.weights.h5", variant="s24")


def test_loading_checkpoints_never_imports_torch(s12_files):
    paths = [str(p) for p in s12_files.values()]
    script = (
        "import sys\n"
        "import keras_poolformer as kp\n"
        "for path in sys.argv[1:]:\n"
        "    kp.PoolFormerS12(weights=path)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('imported:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "imported: []" in result.stdout

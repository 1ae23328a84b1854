"""Checks of the timm reference for the MetaFormer baselines (tests/timm_reference.py):
parameter counts, the official checkpoint layout, the head-norm eps switch, seeding,
RandFormer's mixer and the torchvision stand-in. Only S12 / S18 models run forward."""

import importlib.util

import numpy as np
import pytest
import timm_reference as ref
import torch
from safetensors.numpy import load_file
from timm.models.metaformer import checkpoint_filter_fn

SMALL = ["caformer_s18", "convformer_s18", "poolformerv2_s12", "identityformer_s12"]
SMALL.append("randformer_s12")


def images(name, count=2, seed=0):
    """Normalised-looking channels-last inputs: 224 x 224 for RandFormer (its mixers fix
    the token counts), 64 x 64 for the others (fast; attention still has 4 x 4 tokens)."""
    size = 224 if name.startswith("randformer") else 64
    return np.random.default_rng(seed).normal(size=(count, size, size, 3)).astype(np.float32)


def counted_parameters(name, trainable_only=False):
    """The parameter count of ``name`` worked out from the official architecture, layer
    by layer (no model is built): what the models must have."""
    family = name.split("_")[0]
    depths, dims = ref.ARCHITECTURES[name]
    total = 3 * dims[0] * 49 + dims[0] + dims[0]  # stem conv 7x7 with bias, its norm
    for c_in, c_out in zip(dims[:-1], dims[1:], strict=True):
        total += c_in + c_in * c_out * 9 + c_out  # pre-norm, conv 3x3 with bias
    for stage, (depth, c) in enumerate(zip(depths, dims, strict=True)):
        mixer = ref.MIXERS[family][stage]
        block = 2 * c + 4 * c * c * 2 + 2  # two norms, MLP fc1 and fc2, its StarReLU
        block += 2 * c if stage >= 2 else 0  # res scales
        if mixer == "sepconv":
            block += c * 2 * c + 2 + 2 * c * 49 + 2 * c * c
        elif mixer == "attention":
            heads_dim = (c // 32) * 32
            block += c * 3 * heads_dim + heads_dim * c
        elif mixer == "random" and not trainable_only:
            block += ref.RANDOM_MIXING_TOKENS[stage] ** 2
        total += depth * block
    c = dims[-1]
    total += 2 * c  # output LayerNorm with bias
    if ref.uses_mlp_head(name):
        total += c * 4 * c + 4 * c + 2 * 4 * c + 4 * c * 1000 + 1000
    else:
        total += c * 1000 + 1000
    return total


@pytest.mark.parametrize("name", sorted(ref.TIMM_PARAMS))
def test_counts_from_the_architecture_match_timms_figures(name):
    assert counted_parameters(name) == ref.TIMM_PARAMS[name]


@pytest.mark.parametrize("name", sorted(ref.ARCHITECTURES))
def test_parameter_counts_and_official_keys(name):
    model = ref.build_model(name, device="meta")  # no memory, no init: just the shapes
    renamed = sorted(ref.official_key(key) for key in model.state_dict())
    assert renamed == sorted(ref.official_keys(name))
    assert ref.parameter_count(model) == counted_parameters(name)
    assert ref.parameter_count(model) == ref.TIMM_PARAMS.get(name, counted_parameters(name))
    trainable = ref.parameter_count(model, frozen=False)
    assert trainable == counted_parameters(name, trainable_only=True)
    if name.startswith(("randformer", "identityformer")):
        # only the token mixers differ from PoolFormerV2 (pooling has no weights)
        poolformer = ref.TIMM_PARAMS["poolformerv2_" + name.split("_")[1]]
        assert trainable == poolformer
        assert (ref.parameter_count(model) > trainable) == name.startswith("randformer")


@pytest.mark.parametrize("name", SMALL)
def test_official_layout_loads_through_timms_filter(name):
    model = ref.reference_model(name, seed=3)
    x = images(name)
    logits = ref.reference_logits(model, x)
    # non-trivial weights: logits of order 1 that depend on the input
    assert 0.5 < logits.std() < 2.0
    assert np.abs(logits[0] - logits[1]).mean() > 0.3 * logits.std()

    state = ref.official_state_dict(name, model)
    assert "stem.conv.weight" not in state  # else timm's filter passes it through as is
    width = ref.ARCHITECTURES[name][1][0]
    assert state["stages.0.0.mlp.fc1.weight"].shape == (4 * width, width)  # nn.Linear
    assert state["downsample_layers.1.conv.weight"].ndim == 4
    if name.startswith(("convformer", "caformer")):
        assert state["stages.1.0.token_mixer.pwconv2.weight"].ndim == 2
        assert state["stages.1.0.token_mixer.dwconv.weight"].shape[1:] == (1, 7, 7)

    fresh = ref.build_model(name)
    assert not np.allclose(ref.reference_logits(fresh.eval(), x), logits)
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    fresh.load_state_dict(checkpoint_filter_fn(tensors, fresh), strict=True)
    np.testing.assert_array_equal(ref.reference_logits(fresh.eval(), x), logits)


def test_official_layout_is_checked_against_the_name():
    model = ref.build_model("convformer_s18", device="meta")
    with pytest.raises(AssertionError, match="official keys differ"):
        ref.official_state_dict("caformer_s18", model)


@pytest.mark.parametrize("name", ["caformer_s18", "convformer_s18"])
def test_head_norm_eps_switch(name):
    x = images(name)
    timm_model = ref.reference_model(name)
    official = ref.reference_model(name, head_norm_eps=1e-5)
    assert timm_model.head.fc.norm.eps == 1e-6
    assert official.head.fc.norm.eps == 1e-5
    difference = np.abs(ref.reference_logits(official, x) - ref.reference_logits(timm_model, x))
    assert difference.max() > 0.03  # measured about 0.15 (and 1e-5 at unit variance)
    # the eps is the only difference: the weights are the same
    official_state = official.state_dict()
    for key, value in timm_model.state_dict().items():
        assert torch.equal(official_state[key], value), key


def test_head_norm_eps_needs_an_mlp_head():
    with pytest.raises(ValueError, match="Linear head"):
        ref.reference_model("poolformerv2_s12", head_norm_eps=1e-5)


def test_reference_is_deterministic_per_seed():
    torch.manual_seed(1)
    first = ref.timm_state_dict(ref.reference_model("randformer_s12", seed=7))
    torch.manual_seed(2)  # the global RNG plays no part
    again = ref.timm_state_dict(ref.reference_model("randformer_s12", seed=7))
    other = ref.timm_state_dict(ref.reference_model("randformer_s12", seed=8))
    assert list(first) == list(again) == list(other)
    for key, value in first.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
        assert not np.array_equal(other[key], value), key


def test_random_mixing_is_the_official_token_mixing():
    model = ref.reference_model("randformer_s12")
    stage2, stage3 = (model.stages[i].blocks[0].token_mixer for i in (2, 3))
    assert isinstance(model.stages[0].blocks[0].token_mixer, torch.nn.Identity)
    assert stage2.random_matrix.shape == (196, 196) and stage3.random_matrix.shape == (49, 49)
    assert not stage2.random_matrix.requires_grad
    np.testing.assert_allclose(stage3.random_matrix.sum(-1).numpy(), 1.0, rtol=1e-6)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 5, 7, 7)).astype(np.float32))
    with torch.no_grad():
        mixed = stage3(x)  # timm's stages run channels-first
    # the official formula on channels-last tokens in row-major order
    tokens = x.permute(0, 2, 3, 1).reshape(2, 49, 5)
    expected = torch.einsum("mn,bnc->bmc", stage3.random_matrix, tokens)
    expected = expected.reshape(2, 7, 7, 5).permute(0, 3, 1, 2)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="49 tokens"):
        stage3(x[:, :, :6])


def test_saved_layouts_read_back(tmp_path):
    model = ref.reference_model("identityformer_s12")
    official = ref.official_state_dict("identityformer_s12", model)
    hub = ref.timm_state_dict(model)
    for state, path in (
        (official, tmp_path / "official.pth"),
        (hub, tmp_path / "model.safetensors"),
    ):
        ref.save_state_dict(state, path)
        if path.suffix == ".pth":
            read = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
        else:
            read = load_file(str(path))
        assert sorted(read) == sorted(state)
        for key, value in state.items():
            np.testing.assert_array_equal(read[key], value, err_msg=key)
    with pytest.raises(ValueError):
        ref.save_state_dict(hub, tmp_path / "model.npz")


def test_torchvision_stand_in_stays_out_of_the_way():
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("a real torchvision is installed; the stand-in is not used")
    # timm imported with the stand-in, which is gone again afterwards ...
    from timm.layers import norm_act

    placeholder = norm_act.FrozenBatchNorm2d
    assert placeholder.__module__ == "torchvision.ops.misc"
    # ... and it refuses to work if ever called
    with pytest.raises(RuntimeError, match="stand-in"):
        placeholder(8)

"""MetaFormer: every token mixer, norm and activation of the paper, and the official hybrids.

Each part builds, trains a step, and survives a `.keras` round trip; the mixers with
weights compute what PyTorch's own building blocks compute with the same weights; the
hybrids' parameter counts are worked out by hand from the official code; the attention and
spatial-MLP hybrids export to a SavedModel and a TFLite model that agree with Keras.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_poolformer as kp
from keras_poolformer import export, mixers

TINY_DIMS = {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}
SIZE = 64

MIXER_CASES = [
    "identity",
    "random",
    {"type": "pooling", "pool_size": 3},
    {"type": "pooling", "pool_size": 5},
    {"type": "pooling", "pool_size": 7},
    {"type": "pooling", "pool_size": 9},
    "dwconv",
    {"type": "attention", "head_dim": 8},
    "spatial_mlp",
]


def _case_id(case):
    return case if isinstance(case, str) else "-".join(str(v) for v in case.values())


def _train_step_and_round_trip(model, tmp_path):
    """One AdamW step on random data (the loss must be finite and the trainable weights
    must move), then a `.keras` round trip that must give the same outputs."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    model.compile(
        keras.optimizers.AdamW(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = {w.path: w.numpy().copy() for w in model.weights}
    loss = model.train_on_batch(images, labels)
    assert np.isfinite(loss)
    moved = [
        w.path for w in model.trainable_weights if not np.array_equal(w.numpy(), before[w.path])
    ]
    assert len(moved) == len(model.trainable_weights)
    for w in model.non_trainable_weights:  # frozen random matrices stay as they were
        if w.path.endswith("matrix"):
            np.testing.assert_array_equal(w.numpy(), before[w.path])

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )
    return reloaded


def _tiny_logits_model(**options):
    """A tiny four-class MetaFormer with logits out, ``options`` passed through."""
    return kp.MetaFormer(
        **TINY_DIMS, **options, input_shape=(SIZE, SIZE, 3), classes=4, classifier_activation=None
    )


@pytest.mark.parametrize("mixer", MIXER_CASES, ids=_case_id)
def test_each_token_mixer_builds_trains_and_reloads(mixer, tmp_path):
    model = _tiny_logits_model(token_mixers=mixer)
    block = model.get_layer("stage2_block1")
    assert block.mixer["type"] == (mixer if isinstance(mixer, str) else mixer["type"])
    reloaded = _train_step_and_round_trip(model, tmp_path)
    assert reloaded.get_layer("stage2_block1").mixer == block.mixer


@pytest.mark.parametrize("norm", ["mln", "layernorm", "batchnorm"])
def test_each_norm_builds_trains_and_reloads(norm, tmp_path):
    model = _tiny_logits_model(norm=norm)
    kinds = {
        "mln": kp.layers.ModifiedLayerNorm,
        "layernorm": keras.layers.LayerNormalization,
        "batchnorm": keras.layers.BatchNormalization,
    }
    assert type(model.get_layer("norm")) is kinds[norm]
    assert type(model.get_layer("stage0_block0").norm1) is kinds[norm]
    _train_step_and_round_trip(model, tmp_path)  # batchnorm: moving statistics reload too


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
def test_each_activation_builds_trains_and_reloads(activation, tmp_path):
    model = _tiny_logits_model(activation=activation)
    mlp = model.get_layer("stage0_block0").mlp
    x = keras.ops.convert_to_tensor(np.linspace(-3, 3, 8 * 4 * 4).reshape(1, 4, 4, 8), "float32")
    hidden = mlp.fc1(x).numpy()
    expected = {
        "gelu": hidden * 0.5 * (1 + np.vectorize(__import__("math").erf)(hidden / np.sqrt(2))),
        "relu": np.maximum(hidden, 0),
        "silu": hidden / (1 + np.exp(-hidden)),
    }[activation]
    np.testing.assert_allclose(mlp(x).numpy(), mlp.fc2(expected).numpy(), atol=1e-5)
    _train_step_and_round_trip(model, tmp_path)


def test_poolformer_is_the_pooling_mln_gelu_metaformer():
    """PoolFormer(...) and MetaFormer(pooling, MLN, GELU) are one model: the same blocks,
    weights in the same order, the same function."""
    pool = kp.PoolFormer(**TINY_DIMS, input_shape=(SIZE, SIZE, 3), classes=4)
    meta = kp.MetaFormer(**TINY_DIMS, input_shape=(SIZE, SIZE, 3), classes=4)
    assert type(meta.get_layer("stage0_block0")) is kp.layers.PoolFormerBlock
    meta.set_weights(pool.get_weights())
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_array_equal(meta(images).numpy(), pool(images).numpy())


# --- the mixers and norms against PyTorch's own building blocks -------------------------


def test_mixers_and_norms_match_pytorch_building_blocks():
    """Attention against torch.nn.MultiheadAttention (its packed in-projection is the
    official qkv, heads split the same way), spatial MLP against nn.Linear over tokens,
    depthwise conv against a grouped nn.Conv2d, LayerNorm against F.layer_norm over
    channels, BatchNorm against nn.BatchNorm2d in eval mode."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 6, 64)).astype(np.float32)  # 30 tokens, 64 channels
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def to_nhwc(t):
        return t.detach().numpy().transpose(0, 2, 3, 1)

    # multi-head self-attention, 2 heads of 32
    attention = mixers.Attention(head_dim=32)
    attention.build(x.shape)
    mha = torch.nn.MultiheadAttention(64, 2, bias=True, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.zero_()  # the official qkv has no bias
        tokens = torch.from_numpy(x.reshape(2, 30, 64))
        expected = mha(tokens, tokens, tokens, need_weights=False)[0].numpy().reshape(x.shape)
    attention.qkv.kernel.assign(mha.in_proj_weight.detach().numpy().T)
    attention.proj.kernel.assign(mha.out_proj.weight.detach().numpy().T)
    attention.proj.bias.assign(mha.out_proj.bias.detach().numpy())
    np.testing.assert_allclose(attention(x).numpy(), expected, atol=1e-5)

    # spatial MLP: one Linear(N, N) over the flattened tokens of each channel
    spatial = mixers.SpatialMlp()
    spatial.build(x.shape)
    linear = torch.nn.Linear(30, 30, bias=False)
    spatial.matrix.assign(linear.weight.detach().numpy())
    expected = linear(torch.flatten(nchw, 2)).reshape(nchw.shape)
    np.testing.assert_allclose(spatial(x).numpy(), to_nhwc(expected), atol=1e-5)

    # the frozen random matrix: rows are convex combinations, and it is not trained
    random = mixers.RandomMixing(seed=4)
    random.build(x.shape)
    np.testing.assert_allclose(random.matrix.numpy().sum(axis=1), 1.0, atol=1e-6)
    assert random.matrix.numpy().min() > 0 and not random.trainable_weights

    # depthwise convolution, 3x3, zero padding 1
    dwconv = mixers.DepthwiseConvMixer(kernel_size=3)
    dwconv.build(x.shape)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
    dwconv.conv.kernel.assign(conv.weight.detach().numpy().transpose(2, 3, 0, 1))
    dwconv.conv.bias.assign(conv.bias.detach().numpy())
    np.testing.assert_allclose(dwconv(x).numpy(), to_nhwc(conv(nchw)), atol=1e-5)

    # norms, with non-trivial affines and statistics
    weight = rng.normal(1, 0.2, 64).astype(np.float32)
    bias = rng.normal(0, 0.2, 64).astype(np.float32)
    layernorm = mixers.make_norm("layernorm", "ln")
    layernorm.build(x.shape)
    layernorm.set_weights([weight, bias])
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (64,), torch.from_numpy(weight), torch.from_numpy(bias), eps=1e-5
    )
    np.testing.assert_allclose(layernorm(x).numpy(), expected.numpy(), atol=1e-5)

    mean = rng.normal(0, 0.5, 64).astype(np.float32)
    var = rng.uniform(0.5, 2, 64).astype(np.float32)
    batchnorm = mixers.make_norm("batchnorm", "bn")
    batchnorm.build(x.shape)
    batchnorm.set_weights([weight, bias, mean, var])
    bn = torch.nn.BatchNorm2d(64).eval()
    bn.load_state_dict(
        {
            "weight": torch.from_numpy(weight),
            "bias": torch.from_numpy(bias),
            "running_mean": torch.from_numpy(mean),
            "running_var": torch.from_numpy(var),
            "num_batches_tracked": torch.tensor(1),
        }
    )
    np.testing.assert_allclose(batchnorm(x).numpy(), to_nhwc(bn(nchw)), atol=1e-5)


# --- the official hybrids: parameter arithmetic ------------------------------------------

# PoolFormer-S12 (worked out and checked against the official checkpoint in test_models):
S12 = 11_915_176


def _attention(dim):
    return 3 * dim * dim + dim * dim + dim  # qkv (no bias) + proj (weight and bias)


def _spatial(tokens):
    return tokens * tokens  # one Linear(N, N) without bias


# S12's blocks per stage (2, 2, 6, 2), dims (64, 128, 320, 512); at 224x224 the stages
# hold 56x56, 28x28, 14x14 and 7x7 tokens. Pooling and identity have no weights, MLN and
# LayerNorm the same two vectors, so every difference to S12 is the new mixers plus the
# position embedding (C x H x W, before the first attention stage).
HYBRID_ARITHMETIC = {
    # identity: nothing added, nothing removed
    "id_s12": S12,
    # [Pool, Pool, Pool, Attention]: 2 * (4 * 512^2 + 512) + 512 * 7 * 7
    "pppa_s12": S12 + 2 * _attention(512) + 512 * 7 * 7,
    # [Pool, Pool, Attention, Attention]: 6 * (4 * 320^2 + 320) + 2 * (4 * 512^2 + 512)
    #                                     + 320 * 14 * 14
    "ppaa_s12": S12 + 6 * _attention(320) + 2 * _attention(512) + 320 * 14 * 14,
    # [Pool, Pool, Pool, SpatialFC]: 2 * 49^2
    "pppf_s12": S12 + 2 * _spatial(49),
    # [Pool, Pool, SpatialFC, SpatialFC]: 6 * 196^2 + 2 * 49^2
    "ppff_s12": S12 + 6 * _spatial(196) + 2 * _spatial(49),
}


def test_hybrid_arithmetic_written_out():
    assert HYBRID_ARITHMETIC == {
        "id_s12": 11_915_176,
        "pppa_s12": 11_915_176 + 2_098_176 + 25_088,  # = 14,038,440 (paper: 14.0M)
        "ppaa_s12": 11_915_176 + 2_459_520 + 2_098_176 + 62_720,  # = 16,535,592 (16.5M)
        "pppf_s12": 11_915_176 + 4_802,  # = 11,919,978 (11.9M)
        "ppff_s12": 11_915_176 + 230_496 + 4_802,  # = 12,150,474 (12.2M)
    }


@pytest.mark.parametrize("key", list(HYBRID_ARITHMETIC))
def test_hybrid_parameter_counts_match_the_official_arithmetic(key):
    model = kp.HYBRIDS[key]()
    assert model.count_params() == HYBRID_ARITHMETIC[key] == kp.HYBRID_CONFIGS[key]["params"]
    mixer_types = [model.get_layer(f"stage{s}_block0").mixer["type"] for s in range(4)]
    assert tuple(mixer_types) == kp.HYBRID_CONFIGS[key]["token_mixers"]
    assert model.input_shape == (None, 224, 224, 3)


def test_bad_metaformer_arguments_are_named_before_anything_is_built(monkeypatch):
    monkeypatch.setattr("keras_poolformer.models.MetaFormerBlock", None)  # nothing is built
    monkeypatch.setattr("keras_poolformer.models.PoolFormerBlock", None)
    cases = [
        ({"token_mixers": "convolution"}, "unknown token mixer 'convolution'"),
        ({"token_mixers": ["pooling"] * 3}, "one mixer per stage"),
        ({"token_mixers": {"type": "pooling", "pool_size": 4}}, "positive odd integer"),
        ({"token_mixers": {"type": "attention", "heads": 2}}, "takes the options"),
        ({"token_mixers": "attention"}, "divisible by head_dim 32"),
        ({"norm": "groupnorm"}, "unknown norm 'groupnorm'"),
        ({"activation": "tanh"}, "unknown activation 'tanh'"),
        ({"position_embeddings": (4,)}, "stage indices 0-3"),
        (
            {"token_mixers": "spatial_mlp", "include_top": False, "input_shape": (None, None, 3)},
            "fixed number of tokens",
        ),
        ({"token_mixers": "identity", "weights": "imagenet"}, "is not a PoolFormer"),
        ({"token_mixers": "identity", "weights": "/nowhere/x.weights.h5"}, "does not exist"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            kp.MetaFormer(**TINY_DIMS, **kwargs)


def test_weights_file_of_another_architecture_is_refused(tmp_path):
    attention = dict(TINY_DIMS, dims=(32, 32, 64, 64), token_mixers="attention")
    donor = kp.MetaFormer(**attention, input_shape=(SIZE, SIZE, 3), classes=4)
    path = tmp_path / "donor.weights.h5"
    donor.save_weights(path)
    same = kp.MetaFormer(**attention, input_shape=(SIZE, SIZE, 3), classes=4, weights=path)
    for a, b in zip(same.weights, donor.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="does not fit model"):
        kp.MetaFormer(
            **dict(attention, token_mixers="dwconv"),
            input_shape=(SIZE, SIZE, 3),
            classes=4,
            weights=path,
        )


# --- the hybrids deploy ------------------------------------------------------------------


def _randomize(model, seed):
    """Non-trivial weights everywhere (layer scales, position embeddings and norm affines
    at their initial values would hide a wrong mixer behind a near-identity block)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape, name = tuple(w.shape), w.path.rsplit("/", 1)[-1]
        if name in ("gamma", "scale"):
            value = rng.normal(1.0 if name == "gamma" else 0.3, 0.1, shape)
        elif len(shape) >= 2 and name != "embedding":
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        w.assign(value.astype(np.float32))


@pytest.mark.parametrize(
    "key",
    ["ppaa_s12", "ppff_s12", pytest.param("pppa_s12", marks=pytest.mark.slow),
     pytest.param("pppf_s12", marks=pytest.mark.slow)],
)  # fmt: skip
def test_hybrids_export_to_saved_model_and_tflite(key, tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("tensorflow_serving")
    model = kp.HYBRIDS[key](classifier_activation=None)
    _randomize(model, seed=5)
    images = np.random.default_rng(6).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    logits = model(images).numpy()
    assert logits.std() > 0.1  # the weights make a difference between the images

    directory = export.export_saved_model(model, tmp_path / key, version=1, crop_pct=0.95)
    served = tf.saved_model.load(directory).signatures["predict_pixels"]
    np.testing.assert_allclose(served(images=tf.constant(images))["logits"], logits, atol=1e-4)

    path = tmp_path / f"{key}.tflite"
    export.export_tflite(model, path)
    np.testing.assert_allclose(export.run_tflite(path, images), logits, atol=1e-4)


def test_porting_refuses_a_metaformer_that_is_not_a_poolformer():
    """The official PoolFormer layout has no place for attention weights: porting must
    refuse, not skip them."""
    model = kp.MetaFormer(**dict(TINY_DIMS, dims=(32, 32, 64, 64)), token_mixers="attention")
    with pytest.raises(ValueError, match="not a PoolFormer"):
        kp.porting.export_state_dict(model)

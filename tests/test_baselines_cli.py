"""The command line over every registered model: ``summary``'s table (counted from the
configurations, and checked against built models) and ``export --model NAME``."""

import numpy as np
import pytest
import tensorflow as tf

import keras_poolformer as kp
from keras_poolformer import analysis, cli, registry


def rows(out):
    """``{model: cells}`` of the table ``summary`` prints."""
    table = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 8 and cells[-1] in ("model", "config") and cells[0] != "model":
            table[cells[0]] = cells
    return table


def test_summary_lists_every_registered_model_from_its_config(capsys):
    """Without ``--build`` the baselines are counted from their configurations (no
    model built: the whole table of 23+ models in well under a second)."""
    names = list(registry.MODELS)
    assert cli.main(["summary", "--models", *names]) == 0
    table = rows(capsys.readouterr().out)
    assert sorted(table) == sorted(names)
    for name, spec in registry.MODELS.items():
        _, family, params, paper_params, macs, paper_macs, diff, counted = table[name]
        assert family == spec.family and counted == "config"
        assert params == paper_params == f"{spec.params:,}"  # the registry's are timm's
        assert paper_macs == f"{spec.macs / 1e9:.1f}G"
        # the published MACs are rounded to 0.1G: within 3% (or 0.05G) of the count
        assert abs(float(macs[:-1]) * 1e9 - spec.macs) <= max(0.03 * spec.macs, 0.05e9), name


@pytest.mark.parametrize("name", ["caformer_s18", "randformer_s12"])
def test_the_counts_from_the_config_are_the_built_models(name, capsys):
    """Attention (token-by-token products) and the random mixer (an einsum) are where a
    count from the architecture could part from the graph's; both agree exactly."""
    spec = registry.get(name)
    model = getattr(kp, spec.constructor)(weights=None)
    assert analysis.baseline_params(spec.config) == model.count_params() == spec.params
    assert analysis.baseline_macs(spec.config) == kp.count_macs(model)
    assert cli.main(["summary", "--models", name, "--build"]) == 0
    built = rows(capsys.readouterr().out)[name]
    assert cli.main(["summary", "--models", name]) == 0
    counted = rows(capsys.readouterr().out)[name]
    assert built[:-1] == counted[:-1] and (built[-1], counted[-1]) == ("model", "config")


def test_summary_names_are_every_model():
    names = cli.all_model_names()
    assert set(registry.MODELS) <= set(names)
    assert {"s12", "m48", "pppa_s12", "ppff_s12"} <= set(names)
    assert len(names) == len(set(names))


def test_export_accepts_every_registered_name(tmp_path):
    parser = cli.build_parser()
    for name in cli.all_model_names():
        args = parser.parse_args(["export", "--model", name, "--saved-model", str(tmp_path)])
        assert args.model == name
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--model", "caformer_s19", "--saved-model", str(tmp_path)])


def test_export_a_baseline_by_name(tmp_path, capsys):
    """A random-weight PoolFormerV2-S12 (folded, as by default) serves what the Keras
    model computes; an unknown checkpoint tag is refused in one line. (CAFormer and
    ConvFormer exports are checked in test_baselines_export.py.)"""
    weights = tmp_path / "poolformerv2_s12.weights.h5"
    model = kp.PoolFormerV2S12(weights=None, classifier_activation=None)
    model.save_weights(weights)
    args = ["export", "--model", "poolformerv2_s12", "--weights", str(weights)]
    assert cli.main([*args, "--saved-model", str(tmp_path / "serving")]) == 0
    assert "SavedModel:" in capsys.readouterr().out
    served = tf.saved_model.load(str(tmp_path / "serving" / "1")).signatures["predict_pixels"]
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    logits = served(images=tf.constant(images))["logits"].numpy()
    assert np.abs(logits - model(images).numpy()).max() <= 1e-4
    args = ["export", "--model", "caformer_s18", "--weights", "in2k", "--saved-model", "x"]
    assert cli.main(args) == 2
    assert "CAFormerS18 has no checkpoint 'in2k'" in capsys.readouterr().err

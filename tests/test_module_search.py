"""The module-structure comparison (ubnas_tf.module_search, tools/compare_modules.py).

Kept small: 8x8x1 synthetic images, a one-node proxy genotype, 3 cells of width 32.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import keras_tuner
import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from ubnas_tf.genotype import Genotype
from ubnas_tf.module_search import (
    FIELD_CHOICES,
    PROXY_GENOTYPE,
    ModuleComparisonError,
    ModuleHyperModel,
    compare_modules,
    matching_variant,
)
from ubnas_tf.modules import (
    MODULE_CONFIGS,
    BinaryConvModule,
    BinaryPreprocess,
    RealPreprocess,
    SkipModule,
)
from ubnas_tf.nets.eval_network import EvalNetworkConfig
from ubnas_tf.quantizers import LearnableThresholdApproxSign

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Genotype((("bconv_3x3", 0), ("skip_connect", 1)), (2,),
                (("bconv_3x3", 0), ("skip_connect", 1)), (2,))
NET = EvalNetworkConfig(layers=3, init_channels=32)


def _hypermodel(mode="named"):
    return ModuleHyperModel((8, 8, 1), 4, mode=mode, genotype=TINY, net_config=NET,
                            epochs=1, steps_per_epoch=2)


def _layers(model, cls):
    return [layer for layer in model._flatten_layers() if isinstance(layer, cls)]


def _fixed(**values):
    hp = keras_tuner.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    return hp


def test_proxy_genotype_is_valid():
    PROXY_GENOTYPE.validate()
    assert PROXY_GENOTYPE.ops_used() == {"bconv_3x3", "skip_connect"}


def test_hypermodel_builds_every_named_variant():
    hm = _hypermodel()
    for name, config in MODULE_CONFIGS.items():
        model = hm.build(_fixed(module_config=name))
        assert model.module_config == config
        assert model.optimizer is not None and model.output_shape == (None, 4)
        convs = _layers(model, BinaryConvModule)
        assert convs and all(c.config == config for c in convs)
        prelus = _layers(model, tf.keras.layers.PReLU)
        thresholds = _layers(model, LearnableThresholdApproxSign)
        if name == "reactnet":
            assert prelus and thresholds
        else:
            assert not prelus and not thresholds
        pre = _layers(model, RealPreprocess) + _layers(model, BinaryPreprocess)
        if name == "real_preprocess":
            assert all(isinstance(p, RealPreprocess) for p in pre)
            conv = pre[0].conv
            assert type(conv) is tf.keras.layers.Conv2D and conv.kernel_size == (1, 1)
        else:
            assert pre and all(isinstance(p, BinaryPreprocess) for p in pre)
            assert all(p.config.preprocess == config.preprocess for p in pre)
        assert all((c.pre_bn is None) == (name == "no_pre_bn") for c in convs)
        kernels = {type(q.kernel_quantizer).__name__ for q in _layers(model, lq.layers.QuantConv2D)}
        assert kernels == {"SteSign" if name == "bireal" else "MagnitudeAwareSign"}
        pools = [s.pool for s in _layers(model, SkipModule) if s.strides == 2]
        assert pools
        expected = tf.keras.layers.MaxPool2D if name == "maxpool_shortcut" else \
            tf.keras.layers.AveragePooling2D
        assert all(isinstance(p, expected) for p in pools)


def test_hypermodel_fields_mode():
    hm = _hypermodel("fields")
    space = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(space)
    assert [h.name for h in space.space] == list(FIELD_CHOICES)
    # reactnet's structure, spelled field by field, is recognised as reactnet.
    reactnet = MODULE_CONFIGS["reactnet"].to_dict()
    reactnet.pop("name")
    config = hm.module_config(_fixed(**reactnet))
    assert config.activation == "prelu" and matching_variant(config) == "reactnet"
    assert config.name == "activation=prelu+activation_quantizer=learnable_threshold_approx_sign"
    # Defaults are the universal structure.
    defaults = keras_tuner.HyperParameters()
    assert hm.module_config(defaults).name == "universal"
    assert set(FIELD_CHOICES["preprocess"]) >= {"binary", "real"}
    model = hm.build(_fixed(bn_before_sign=False, activation="none", preprocess="real",
                            downsample_shortcut="max_pool", activation_quantizer="approx_sign",
                            kernel_quantizer="ste_sign"))
    assert model.module_config.activation is None and _layers(model, RealPreprocess)
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", model.name)  # a valid TF name scope
    assert matching_variant(model.module_config) is None


def test_unknown_variant_and_mode_are_rejected():
    with pytest.raises(ModuleComparisonError, match="universal"):
        ModuleHyperModel((8, 8, 1), 4, variants=["universal", "nope"])
    with pytest.raises(ModuleComparisonError, match="mode"):
        ModuleHyperModel((8, 8, 1), 4, mode="grid")


def _synthetic():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 127).astype(np.int32)  # learnable: top half bright
    xv = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    yv = (xv[:, :4].mean(axis=(1, 2, 3)) > 127).astype(np.int32)
    return x, y, xv, yv


def test_compare_modules_ranks_writes_and_resumes(tmp_path):
    out = str(tmp_path / "cmp")
    kwargs = dict(arrays=_synthetic(), variants=["universal", "reactnet"], epochs=1,
                  batch_size=16, genotype=TINY, layers=3, verbose=0)
    results = compare_modules(out, **kwargs)
    assert [r.rank for r in results] == [1, 2]
    assert {r.name for r in results} == {"universal", "reactnet"}
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    accs = [r["val_accuracy"] for r in saved["results"]]
    assert accs == sorted(accs, reverse=True) and len(accs) == 2
    assert saved["winner"]["name"] == results[0].name
    assert saved["winner"]["module_config"] == MODULE_CONFIGS[results[0].name].to_dict()
    for r in saved["results"]:
        assert r["cost"]["total_params"] > 0 and r["cost"]["bops"] > 0 and r["cost"]["ops"] > 0
        assert len(r["val_accuracy_per_epoch"]) == 1
    # reactnet adds PReLU slopes and thresholds: more real parameters.
    by_name = {r.name: r for r in results}
    assert by_name["reactnet"].cost["real_params"] > by_name["universal"].cost["real_params"]

    tuner_dir = os.path.join(out, "tuner")
    trials = sorted(d for d in os.listdir(tuner_dir) if d.startswith("trial_"))
    assert len(trials) == 2
    stamps = {t: os.stat(os.path.join(tuner_dir, t, "module_result.json")).st_mtime_ns
              for t in trials}

    # Re-running resumes: nothing is retrained, the same ranking comes back.
    again = compare_modules(out, **kwargs)
    assert [(r.name, r.val_accuracy) for r in again] == [(r.name, r.val_accuracy) for r in results]
    assert sorted(d for d in os.listdir(tuner_dir) if d.startswith("trial_")) == trials
    assert {t: os.stat(os.path.join(tuner_dir, t, "module_result.json")).st_mtime_ns
            for t in trials} == stamps

    # Other settings in the same directory are refused.
    with pytest.raises(ModuleComparisonError, match="epochs"):
        compare_modules(out, **{**kwargs, "epochs": 2})


def test_cli_rejects_unknown_variant(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "compare_modules.py"),
         "--variants=universal,not_a_module", f"--output_dir={tmp_path / 'cli'}"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--variants" in proc.stderr and "not_a_module" in proc.stderr
    assert "reactnet" in proc.stderr  # the known names are listed
    assert not os.path.exists(tmp_path / "cli")

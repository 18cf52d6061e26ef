"""The module-structure comparison (ubnas_tf.module_comparison, tools/compare_modules.py).

Kept small: 8x8x1 synthetic images, a one-node proxy genotype, 3 cells of width 32.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import warnings

import keras_tuner
import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from tool_runs import REPO

from ubnas_tf.genotype import Genotype
from ubnas_tf.module_comparison import (
    FIELD_CHOICES,
    PROXY_GENOTYPE,
    Execution,
    ModuleComparisonError,
    ModuleGridSearch,
    ModuleHyperModel,
    ModuleRandomSearch,
    ModuleResult,
    ResumableGridOracle,
    compare_modules,
    decision,
    matching_variant,
    mean_std,
    rank_trials,
    results_csv,
    results_table,
)
from ubnas_tf.module_comparison.oracle import grid
from ubnas_tf.module_comparison.results import (
    COST_METRICS,
    OBJECTIVE,
    record_executions,
    trial_metrics,
)
from ubnas_tf.module_comparison.tuner import added_values, space_differences
from ubnas_tf.modules import (
    MODULE_CONFIGS,
    BinaryConvModule,
    BinaryPreprocess,
    FixedReduction,
    RealPreprocess,
    SkipModule,
)
from ubnas_tf.nets.eval_network import EvalNetworkConfig
from ubnas_tf.quantizers import LearnableThresholdApproxSign

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
        assert bool(prelus) == (config.activation == "prelu")
        assert bool(thresholds) == (config.activation_quantizer
                                    == "learnable_threshold_approx_sign")
        pre = _layers(model, RealPreprocess) + _layers(model, BinaryPreprocess)
        if config.preprocess == "real":
            assert all(isinstance(p, RealPreprocess) for p in pre)
            conv = pre[0].conv
            assert type(conv) is tf.keras.layers.Conv2D and conv.kernel_size == (1, 1)
        else:
            assert pre and all(isinstance(p, BinaryPreprocess) for p in pre)
            assert all(p.config.preprocess == config.preprocess for p in pre)
        assert all((c.pre_bn is None) == (not config.bn_before_sign) for c in convs)
        kernels = {type(q.kernel_quantizer).__name__ for q in _layers(model, lq.layers.QuantConv2D)}
        assert kernels == {"SteSign" if config.kernel_quantizer == "ste_sign"
                           else "MagnitudeAwareSign"}
        blocks = _layers(model, FixedReduction)
        if config.searched_reduction:
            assert not blocks
            pools = [s.pool for s in _layers(model, SkipModule) if s.strides == 2]
            assert pools
            expected = tf.keras.layers.MaxPool2D if config.downsample_shortcut == "max_pool" \
                else tf.keras.layers.AveragePooling2D
            assert all(isinstance(p, expected) for p in pools)
        else:  # the reduction cells (1 and 2 of 3) are fixed blocks of the config's kind
            assert [b.kind for b in blocks] == [config.reduction] * 2
            assert name == f"universal_{config.reduction}_reduction"


def test_hypermodel_fields_mode():
    hm = _hypermodel("fields")
    space = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(space)
    # The field choices first, then the settings (fixed).
    names = [h.name for h in space.space]
    assert names[:len(FIELD_CHOICES)] == list(FIELD_CHOICES)
    assert names[len(FIELD_CHOICES):] == list(hm.settings)
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


def test_hypermodel_declares_its_settings_as_fixed():
    hm = ModuleHyperModel((8, 8, 1), 4, genotype=TINY, net_config=NET, epochs=3,
                          steps_per_epoch=5, seed=None, recorded={"batch_size": 16,
                                                                  "max_examples": None})
    space = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(space)
    fixed = {h.name: h.value for h in space.space
             if isinstance(h, keras_tuner.engine.hyperparameters.Fixed)}
    assert fixed == hm.settings
    assert fixed["epochs"] == 3 and fixed["steps_per_epoch"] == 5 and fixed["batch_size"] == 16
    assert fixed["input_shape"] == "8x8x1" and fixed["layers"] == 3
    assert "bconv_3x3" in fixed["genotype"] and "\n" not in fixed["genotype"]
    assert "seed" not in fixed and "max_examples" not in fixed  # None: not recorded
    with pytest.raises(ValueError, match="epochs"):
        ModuleHyperModel((8, 8, 1), 4, recorded={"epochs": 1})


def test_space_differences_names_what_changed():
    def space(epochs, variants):
        hp = keras_tuner.HyperParameters()
        hp.Choice("module_config", variants)
        hp.Fixed("epochs", epochs)
        hp.Fixed("batch_size", 16)
        return hp

    recorded = space(1, ["universal", "reactnet"])
    assert space_differences(recorded, space(1, ["universal", "reactnet"])) == []
    diffs = space_differences(recorded, space(2, ["universal", "bireal"]))
    assert len(diffs) == 2
    assert diffs[1] == "epochs: directory has 1, now 2"
    assert diffs[0].startswith("module_config:") and "bireal" in diffs[0]
    # Options appended at the end extend the comparison; any other change is another one.
    longer = space(1, ["universal", "reactnet", "combined", "bireal"])
    assert space_differences(recorded, longer) == []
    assert added_values(recorded.space[0], longer.space[0]) == ["combined", "bireal"]
    assert added_values(recorded.space[0], recorded.space[0]) is None
    for other in (["universal"], ["reactnet", "universal", "bireal"],
                  ["universal", "bireal", "reactnet"]):
        changed = space(1, other)
        assert added_values(recorded.space[0], changed.space[0]) is None
        assert [d.split(":")[0] for d in space_differences(recorded, changed)] == ["module_config"]
    new_default = keras_tuner.HyperParameters()
    new_default.Choice("module_config", ["universal", "reactnet", "bireal"], default="reactnet")
    assert added_values(recorded.space[0], new_default.space[0]) is None
    assert added_values(recorded.space[1], space(2, ["universal"]).space[1]) is None  # Fixed
    fewer = keras_tuner.HyperParameters()
    fewer.Fixed("epochs", 1)
    fewer.Fixed("learning_rate", 0.002)
    assert sorted(space_differences(recorded, fewer)) == [
        "batch_size: directory has 16, now nothing",
        "learning_rate: directory has nothing, now 0.002",
        "module_config: directory has {'default': 'universal', 'values': ['universal', "
        "'reactnet'], 'ordered': False}, now nothing",
    ]


def test_grid_order_and_resumable_oracle():
    space = keras_tuner.HyperParameters()
    space.Choice("module_config", ["universal", "bireal", "reactnet"], default="reactnet")
    space.Boolean("flag")
    space.Fixed("epochs", 1)
    combos = list(grid(space))
    assert [(v["module_config"], v["flag"]) for v in combos] == [
        ("reactnet", False), ("reactnet", True), ("universal", False), ("universal", True),
        ("bireal", False), ("bireal", True)]
    assert all(v["epochs"] == 1 for v in combos)

    # A new oracle that finds trials on record (as a reloaded one does) carries on after them.
    oracle = ResumableGridOracle(objective=keras_tuner.Objective("val_accuracy", "max"))
    oracle.update_space(space)

    def record(trial_id, values, status):
        hp = space.copy()
        hp.values = dict(values)
        oracle.trials[trial_id] = keras_tuner.engine.trial.Trial(hp, trial_id, status)
        return oracle.trials[trial_id]

    for trial_id, i in enumerate((0, 1, 3, 4)):
        record(str(trial_id), combos[i], "COMPLETED")
    assert oracle.populate_space("4") == {"status": "RUNNING", "values": combos[2]}
    # A trial on record that failed (in an earlier session) is proposed again; once its
    # retry has completed, the grid carries on. (Failing in this session counts as tried:
    # test_a_failed_trial_is_run_again_by_the_next_session.)
    record("4", combos[2], "FAILED")
    assert oracle.populate_space("5") == {"status": "RUNNING", "values": combos[2]}
    record("5", combos[2], "COMPLETED")
    assert oracle.populate_space("6") == {"status": "RUNNING", "values": combos[5]}
    oracle.ongoing_trials["tuner0"] = record("6", combos[5], "RUNNING")
    assert oracle.populate_space("7")["status"] == "IDLE"  # the last one still runs
    oracle.ongoing_trials.clear()
    assert oracle.populate_space("7")["status"] == "STOPPED"


def test_no_keras_tuner_private_method_is_overridden():
    for cls in (ModuleGridSearch, ModuleRandomSearch, ModuleHyperModel, ResumableGridOracle):
        ours = [k for k in cls.__mro__ if k.__module__.startswith("ubnas_tf")]
        theirs = [k for k in cls.__mro__ if k.__module__.startswith("keras_tuner")]
        for k in ours:
            for name in vars(k):
                if name.startswith("_") and not name.startswith("__"):
                    assert not any(name in vars(t) for t in theirs), f"{k.__name__}.{name}"


def _synthetic():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > 127).astype(np.int32)  # learnable: top half bright
    xv = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    yv = (xv[:, :4].mean(axis=(1, 2, 3)) > 127).astype(np.int32)
    return x, y, xv, yv


@pytest.fixture
def fits(monkeypatch):
    """The runs trained, in order: (structure, seed) per call of ModuleHyperModel.fit; also
    each run's first training batch labels and initial stem kernel (in `fits.batches`,
    `fits.stems`), to see that a seed sets both the data order and the initial weights."""
    trained = Runs()
    fit = ModuleHyperModel.fit

    def counting(self, hp, model, *args, **kwargs):
        trained.append((model.module_config.name, model.execution_seed))
        trained.batches.append(next(iter(args[0]))[1].numpy().tolist())
        trained.stems.append(model.get_layer("stem/conv").kernel.numpy().copy())
        return fit(self, hp, model, *args, **kwargs)

    monkeypatch.setattr(ModuleHyperModel, "fit", counting)
    return trained


class Runs(list):
    def __init__(self):
        super().__init__()
        self.batches, self.stems = [], []

    @property
    def names(self):
        return [name for name, _ in self]


def _mtimes(tuner_dir):
    return {os.path.join(t, f): os.stat(os.path.join(tuner_dir, t, f)).st_mtime_ns
            for t in os.listdir(tuner_dir) if t.startswith("trial_")
            for f in os.listdir(os.path.join(tuner_dir, t)) if f.endswith(".json")}


def test_compare_modules_ranks_writes_and_resumes(tmp_path, fits):
    out = str(tmp_path / "cmp")
    kwargs = dict(arrays=_synthetic(), variants=["universal", "reactnet"], epochs=1,
                  batch_size=16, genotype=TINY, layers=3, seeds=2, seed=3, verbose=0)

    # An interrupted comparison: one of the two structures done, with both its seeds.
    first = compare_modules(out, **kwargs, max_trials=1)
    assert fits == [("universal", 3), ("universal", 4)] and [r.name for r in first] == ["universal"]
    # Each seed has its own data order and initial weights.
    assert fits.batches[0] != fits.batches[1]
    assert not np.array_equal(fits.stems[0], fits.stems[1])

    # Resuming trains only the missing structure, through keras-tuner's public hooks (no
    # deprecated reporting to the oracle from run_trial).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = compare_modules(out, **kwargs)
    assert not [w for w in caught if "update_trial" in str(w.message)]
    assert fits[2:] == [("reactnet", 3), ("reactnet", 4)]
    # The same seeds mean the same batches and the same initial stem for every structure.
    assert fits.batches[2:] == fits.batches[:2]
    for a, b in zip(fits.stems[2:], fits.stems[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r.rank for r in results] == [1, 2]
    assert {r.name for r in results} == {"universal", "reactnet"}
    assert results[0].val_accuracy_mean >= results[1].val_accuracy_mean
    for r in results:
        assert r.n == 2 and r.seeds == [3, 4] and len(r.val_accuracies) == 2
        assert r.val_accuracy_mean == pytest.approx(np.mean(r.val_accuracies))
        assert r.val_accuracy_std == pytest.approx(np.std(r.val_accuracies, ddof=1))
        assert r.wall_time_s_mean == pytest.approx(np.mean(r.wall_times_s), abs=0.01)
        assert [len(e) for e in r.val_accuracy_per_epoch] == [1, 1]
        assert r.val_accuracies == [max(e) for e in r.val_accuracy_per_epoch]

    # The results beside keras-tuner's project: everything as JSON, the table as CSV and
    # markdown.
    assert sorted(os.listdir(out)) == ["comparison.csv", "comparison.json", "comparison.md",
                                       "tuner"]
    with open(os.path.join(out, "comparison.csv")) as f:
        table = list(csv.DictReader(f))
    assert [row["structure"] for row in table] == [r.name for r in results]
    for row, r in zip(table, results, strict=True):
        assert int(row["rank"]) == r.rank and int(row["n"]) == 2 and row["seeds"] == "3 4"
        assert float(row["val_acc_mean"]) == pytest.approx(r.val_accuracy_mean, abs=1e-12)
        assert float(row["val_acc_std"]) == pytest.approx(r.val_accuracy_std, abs=1e-12)
        assert [float(a) for a in row["val_accs"].split()] == r.val_accuracies
        assert int(row["total_params"]) == r.cost["total_params"]
        assert float(row["mops"]) == pytest.approx(r.ops / 1e6)
        assert [float(t) for t in row["wall_times_s"].split()] == r.wall_times_s
    with open(os.path.join(out, "comparison.md")) as f:
        page = f.read()
    assert "64 training and 32 validation images of `arrays`" in page
    assert "seeds 3, 4" in page and decision(results)["text"] in page
    body = [line for line in page.splitlines() if line.startswith("| ")]
    assert body[0].startswith("| structure | rank | n | val_acc mean | std |")
    assert [line.split(" | ")[0][2:] for line in body[1:]] == [r.name for r in results]
    assert f"| {results[0].val_accuracy_mean:.4f} | {results[0].val_accuracy_std:.4f} |" in body[1]
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    assert saved["mode"] == "named" and saved["variants"] == ["universal", "reactnet"]
    assert saved["genotype"] == TINY.to_dict() and saved["training"]["epochs"] == 1
    assert saved["training"]["seeds"] == 2 and saved["training"]["execution_seeds"] == [3, 4]
    assert saved["data"] == {"dataset": "arrays", "train_images": 64, "validation_images": 32}
    assert saved["results"] == [r.to_dict() for r in results] and saved["failed"] == []
    assert saved["decision"] == decision(results)
    assert saved["winner"]["name"] == results[0].name
    assert saved["winner"]["registered_name"] == results[0].name
    assert saved["winner"]["val_accuracy_mean"] == results[0].val_accuracy_mean
    assert saved["winner"]["module_config"] == MODULE_CONFIGS[results[0].name].to_dict()
    for r in saved["results"]:
        assert r["cost"]["total_params"] > 0 and r["cost"]["bops"] > 0 and r["cost"]["ops"] > 0
        assert isinstance(r["cost"]["total_params"], int)
        assert all(t > 0 for t in r["wall_times_s"])
    # reactnet adds PReLU slopes and thresholds: more real parameters.
    by_name = {r.name: r for r in results}
    assert by_name["reactnet"].cost["real_params"] > by_name["universal"].cost["real_params"]
    # The trial record holds every execution (keras-tuner's own files).
    tuner_dir = os.path.join(out, "tuner")
    with open(os.path.join(tuner_dir, "trial_0", "trial.json")) as f:
        record = json.load(f)
    metrics = record["metrics"]["metrics"]
    assert [o["value"] for o in metrics["execution_seed"]["observations"]] == [[3.0], [4.0]]
    assert len(metrics["val_accuracy_per_epoch"]["observations"][0]["value"]) == 2  # 2 runs
    assert record["score"] == pytest.approx(by_name["universal"].val_accuracy_mean)
    assert sorted(f for f in os.listdir(os.path.join(tuner_dir, "trial_0"))
                  if f.startswith("execution_")) == ["execution_0.json", "execution_1.json"]

    # Re-running retrains nothing and reads the same results back from the trial records.
    stamps = _mtimes(tuner_dir)
    assert len(stamps) == 6  # per trial: trial.json and two executions
    again = compare_modules(out, **kwargs)
    assert len(fits) == 4
    assert [r.to_dict() for r in again] == [r.to_dict() for r in results]
    assert _mtimes(tuner_dir) == stamps

    # Other settings in the same directory are refused before anything trains.
    with pytest.raises(ModuleComparisonError, match="epochs: directory has 1, now 2"):
        compare_modules(out, **{**kwargs, "epochs": 2})
    with pytest.raises(ModuleComparisonError, match="seeds: directory has 2, now 3"):
        compare_modules(out, **{**kwargs, "seeds": 3})
    with pytest.raises(ModuleComparisonError, match="module_config"):
        compare_modules(out, **{**kwargs, "variants": ["universal", "bireal"]})
    with pytest.raises(ModuleComparisonError, match="batch_size"):
        compare_modules(out, **{**kwargs, "batch_size": 32})
    with pytest.raises(ModuleComparisonError, match="bn_before_sign"):
        compare_modules(out, **{**kwargs, "variants": None, "mode": "fields"})
    assert len(fits) == 4 and _mtimes(tuner_dir) == stamps

    # overwrite starts afresh.
    fresh = compare_modules(out, **{**kwargs, "epochs": 2, "seeds": 1, "overwrite": True})
    assert fits[4:] == [("universal", 3), ("reactnet", 3)]
    assert all(r.n == 1 and r.val_accuracy_std is None for r in fresh)
    assert all([len(e) for e in r.val_accuracy_per_epoch] == [2] for r in fresh)
    assert "no spread" in decision(fresh)["text"] and not decision(fresh)["decides"]
    with open(os.path.join(out, "comparison.csv")) as f:
        assert [row["val_acc_std"] for row in csv.DictReader(f)] == ["", ""]


def test_an_interrupted_trial_resumes_with_its_unfinished_seeds(tmp_path, monkeypatch):
    out = str(tmp_path / "cmp")
    kwargs = dict(arrays=_synthetic(), variants=["universal"], epochs=1, batch_size=16,
                  genotype=TINY, layers=3, seeds=3, verbose=0)
    runs = []
    fit = ModuleHyperModel.fit

    def killed_in_the_third_run(self, hp, model, *args, **kw):
        runs.append(model.execution_seed)
        if len(runs) == 3:
            raise KeyboardInterrupt  # as a kill: keras-tuner does not catch it
        return fit(self, hp, model, *args, **kw)

    monkeypatch.setattr(ModuleHyperModel, "fit", killed_in_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        compare_modules(out, **kwargs)
    trials = [t for t in os.listdir(os.path.join(out, "tuner")) if t.startswith("trial_")]
    assert len(trials) == 1
    trial_name = trials[0]
    trial_dir = os.path.join(out, "tuner", trial_name)
    assert sorted(f for f in os.listdir(trial_dir) if f.startswith("execution_")) == [
        "execution_0.json", "execution_1.json"]
    stamps = _mtimes(os.path.join(out, "tuner"))

    # keras-tuner runs the interrupted trial again (same id); only seed 2 is trained.
    results = compare_modules(out, **kwargs)
    assert runs == [0, 1, 2, 2]
    assert ["trial_" + r.trial_id for r in results] == [trial_name]
    assert results[0].seeds == [0, 1, 2]
    assert results[0].n == 3 and results[0].val_accuracy_std is not None
    now = _mtimes(os.path.join(out, "tuner"))
    for name in ("execution_0.json", "execution_1.json"):
        assert now[os.path.join(trial_name, name)] == stamps[os.path.join(trial_name, name)]
    with open(os.path.join(trial_dir, "execution_0.json")) as f:
        saved = json.load(f)
    assert saved["seed"] == 0 and saved["structure"] == MODULE_CONFIGS["universal"].to_dict()
    assert results[0].val_accuracies[0] == max(saved["history"]["val_accuracy"])


def test_a_stopped_comparison_shows_its_results_so_far(tmp_path, monkeypatch):
    out = str(tmp_path / "cmp")
    kwargs = dict(arrays=_synthetic(), variants=["universal", "reactnet"], epochs=1,
                  batch_size=16, genotype=TINY, layers=3, seeds=1, verbose=0)
    fit = ModuleHyperModel.fit

    def killed_in_the_second_trial(self, hp, model, *args, **kw):
        if hp.get("module_config") == "reactnet":
            raise KeyboardInterrupt
        return fit(self, hp, model, *args, **kw)

    monkeypatch.setattr(ModuleHyperModel, "fit", killed_in_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        compare_modules(out, **kwargs)
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    assert [r["name"] for r in saved["results"]] == ["universal"] and saved["pending"] == 1
    with open(os.path.join(out, "comparison.md")) as f:
        assert "**Partial**: 1 structure(s) finished, 1 still to run" in f.read()

    monkeypatch.setattr(ModuleHyperModel, "fit", fit)
    results = compare_modules(out, **kwargs)
    assert sorted(r.name for r in results) == ["reactnet", "universal"]
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    assert saved["pending"] == 0 and len(saved["results"]) == 2
    with open(os.path.join(out, "comparison.md")) as f:
        assert "Partial" not in f.read()


def test_a_failed_trial_is_run_again_by_the_next_session(tmp_path, monkeypatch):
    out = str(tmp_path / "cmp")
    kwargs = dict(arrays=_synthetic(), variants=["universal", "reactnet"], epochs=1,
                  batch_size=16, genotype=TINY, layers=3, seeds=1, verbose=0)
    attempts = []
    fit = ModuleHyperModel.fit

    def reactnet_broken(self, hp, model, *args, **kw):
        attempts.append(hp.get("module_config"))
        if hp.get("module_config") == "reactnet":
            raise ValueError("a bug in this session's reactnet")
        return fit(self, hp, model, *args, **kw)

    monkeypatch.setattr(ModuleHyperModel, "fit", reactnet_broken)
    results = compare_modules(out, **kwargs)
    assert attempts == ["universal", "reactnet"]  # failed once, not retried in the session
    assert [r.name for r in results] == ["universal"]
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    [failure] = saved["failed"]
    assert failure["name"] == "reactnet" and failure["status"] == "FAILED"
    assert "a bug in this session's reactnet" in failure["message"]

    # The next session (the bug fixed) runs the failed structure again, and only it.
    monkeypatch.setattr(ModuleHyperModel, "fit", fit)
    results = compare_modules(out, **kwargs)
    assert sorted(r.name for r in results) == ["reactnet", "universal"]
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    assert saved["failed"] == [] and saved["pending"] == 0
    trials = sorted(t for t in os.listdir(os.path.join(out, "tuner")) if t.startswith("trial_"))
    assert len(trials) == 3  # the failed trial stays on record; the retry is a new one


def test_appending_variants_extends_a_finished_comparison(tmp_path, fits):
    out = str(tmp_path / "cmp")
    kwargs = dict(arrays=_synthetic(), epochs=1, batch_size=16, genotype=TINY, layers=3,
                  seeds=1, verbose=0)
    first = compare_modules(out, variants=["universal", "reactnet"], **kwargs)
    tuner_dir = os.path.join(out, "tuner")
    stamps = _mtimes(tuner_dir)

    three = ["universal", "reactnet", "combined"]
    results = compare_modules(out, variants=three, **kwargs)
    assert fits.names == ["universal", "reactnet", "combined"]  # only the new one trained
    now = _mtimes(tuner_dir)
    assert {k: now[k] for k in stamps} == stamps  # the finished trials are untouched
    by_name = {r.name: r for r in results}
    assert sorted(by_name) == sorted(three)
    for r in first:
        assert by_name[r.name].to_dict() == {**r.to_dict(), "rank": by_name[r.name].rank}
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    assert saved["variants"] == three and saved["pending"] == 0 and len(saved["results"]) == 3

    # The oracle saved the longer list: the same command resumes and trains nothing; going
    # back to the shorter list, or reordering, is another comparison.
    compare_modules(out, variants=three, **kwargs)
    assert len(fits) == 3
    for other in (["universal", "reactnet"], ["universal", "combined", "reactnet"]):
        with pytest.raises(ModuleComparisonError, match="module_config: directory has"):
            compare_modules(out, variants=other, **kwargs)
    assert len(fits) == 3


def test_compare_modules_fields_mode(tmp_path, fits):
    out = str(tmp_path / "fields")
    kwargs = dict(arrays=_synthetic(), mode="fields", epochs=1, batch_size=16, genotype=TINY,
                  layers=3, seeds=1, verbose=0)
    assert len(compare_modules(out, **kwargs, max_trials=1)) == 1 and len(fits) == 1
    # The random oracle resumes too: a larger budget adds one trial.
    results = compare_modules(out, **kwargs, max_trials=2)
    assert len(results) == 2 and len(fits) == 2 and [r.rank for r in results] == [1, 2]
    structures = [{k: v for k, v in r.config.items() if k != "name"} for r in results]
    assert structures[0] != structures[1]  # the random oracle does not repeat a combination
    for r in results:
        assert set(r.config) >= set(FIELD_CHOICES)
        assert r.name == r.config["name"] and re.fullmatch(r"[A-Za-z0-9_=+.]+", r.name)
    with open(os.path.join(out, "comparison.json")) as f:
        saved = json.load(f)
    assert saved["mode"] == "fields" and saved["variants"] is None and saved["max_trials"] == 2
    assert saved["field_choices"] == {k: list(v) for k, v in FIELD_CHOICES.items()}
    assert saved["field_choices"]["reduction"] == ["searched", "real", "binary"]
    assert saved["winner"]["module_config"] == results[0].config
    assert saved["winner"]["registered_name"] == matching_variant(results[0].config)


def test_mean_and_sample_standard_deviation_by_hand():
    mean, std = mean_std([0.80, 0.84, 0.82])
    # mean 2.46 / 3; deviations -0.02, 0.02, 0: sqrt((0.0004 + 0.0004) / (3 - 1)) = 0.02
    assert mean == pytest.approx(0.82) and std == pytest.approx(0.02)
    mean, std = mean_std([0.7, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1 * 2 ** 0.5)  # ddof=1
    assert mean_std([0.5]) == (0.5, None)
    with pytest.raises(ValueError):
        mean_std([])


def _cost(ops):
    return {name: 1000.0 for name in COST_METRICS} | {"ops": float(ops), "memory_kb": 1.5}


def _trial_of(executions, name="universal", trial_id="0"):
    """A trial recorded as run_trial and keras-tuner record it, saved and reloaded."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("module_config", list(MODULE_CONFIGS), default=name)
    trial = keras_tuner.engine.trial.Trial(hp, trial_id, "RUNNING")
    record_executions(trial.metrics, executions)
    metrics = trial_metrics(executions)
    for metric, value in metrics.items():  # what Oracle.update_trial does with them
        trial.metrics.update(metric, value)
    trial.status, trial.score = "COMPLETED", trial.metrics.get_best_value(OBJECTIVE)
    reloaded = keras_tuner.engine.trial.Trial.from_state(json.loads(json.dumps(trial.get_state())))
    return reloaded, metrics


def _result_of(executions, name="universal", trial_id="0"):
    trial, metrics = _trial_of(executions, name, trial_id)
    return ModuleResult.from_trial(trial, MODULE_CONFIGS[name]), metrics


def test_executions_are_recorded_and_aggregated_by_hand():
    runs = [  # seed, per-epoch validation accuracy (best 0.80, 0.84, 0.82), wall time
        (5, [0.70, 0.80], 10.0), (6, [0.84, 0.83], 12.0), (7, [0.82, 0.60], 14.0)]
    executions = [Execution.from_fit(seed, {"val_accuracy": acc, "loss": [1.0, 0.5]},
                                     _cost(2e6), t) for seed, acc, t in runs]
    result, metrics = _result_of(executions)
    assert metrics[OBJECTIVE] == pytest.approx(0.82)  # what keras-tuner ranks by: the mean
    assert metrics["val_accuracy_std"] == pytest.approx(0.02)
    assert result.n == 3 and result.seeds == [5, 6, 7]
    assert result.val_accuracies == pytest.approx([0.80, 0.84, 0.82])
    assert result.val_accuracy_mean == pytest.approx(0.82)
    assert result.val_accuracy_std == pytest.approx(0.02)
    assert result.wall_times_s == [10.0, 12.0, 14.0]
    assert result.wall_time_s_mean == 12.0 and result.wall_time_s_std == 2.0
    assert result.val_accuracy_per_epoch == [pytest.approx(a) for _, a, _ in runs]
    assert result.ops == 2e6 and result.cost["total_params"] == 1000

    # Ranking, the table and whether the comparison decides.
    close = [Execution.from_fit(s, {"val_accuracy": [a]}, _cost(1e6), 5.0)
             for s, a in ((5, 0.79), (6, 0.83), (7, 0.78))]  # mean 0.80, std 0.0265
    far = [Execution.from_fit(s, {"val_accuracy": [a]}, _cost(1e6), 5.0)
           for s, a in ((5, 0.70), (6, 0.71), (7, 0.72))]  # mean 0.71, std 0.01
    best, second, third = result, _result_of(close, "bireal", "1")[0], \
        _result_of(far, "reactnet", "2")[0]
    for rank, r in enumerate((best, second, third), 1):
        r.rank = rank
    verdict = decision([best, second, third])
    # lead 0.02 < max(0.02, 0.0265): within the spread
    assert verdict["best"] == "universal" and verdict["second"] == "bireal"
    assert verdict["lead"] == pytest.approx(0.02)
    assert verdict["spread"] == pytest.approx(np.std([0.79, 0.83, 0.78], ddof=1))
    assert not verdict["decides"] and "does NOT decide" in verdict["text"]
    second.rank, third.rank = 3, 2
    verdict = decision([best, second, third])  # lead 0.11 over reactnet > max(0.02, 0.01)
    assert verdict["decides"] and verdict["second"] == "reactnet"
    assert decision([best]) is None
    table = results_table([best, third])
    assert "0.8200" in table and "0.0200" in table and "2.000" in table  # mean, std, MOPs
    assert table.splitlines()[-1].startswith(
        "The comparison decides: at equal OPs, universal leads reactnet")


def _runs(accuracies, ops):
    return [Execution.from_fit(seed, {"val_accuracy": [acc]}, _cost(ops), 5.0)
            for seed, acc in enumerate(accuracies)]


def _ranked(specs):
    """rank_trials over trials of (name, accuracies, OPs), trial ids in the order given."""
    trials = {str(i): _trial_of(_runs(accs, ops), name, str(i))[0]
              for i, (name, accs, ops) in enumerate(specs)}
    return rank_trials(trials, lambda hp: MODULE_CONFIGS[hp.get("module_config")])[0]


def test_a_dearer_structure_that_leads_is_not_chosen():
    # real_preprocess is the most accurate by far, at 9x universal's OPs; bireal is at
    # 1.10x (inside +-15 %), no_pre_bn at 0.80x (outside). Listed first, to show that the
    # reference is universal (the default structure), not the earliest trial.
    results = _ranked([("real_preprocess", (0.90, 0.91, 0.92), 27e6),
                       ("universal", (0.80, 0.81, 0.82), 3e6),
                       ("bireal", (0.70, 0.71, 0.72), 3.3e6),
                       ("no_pre_bn", (0.85, 0.86, 0.87), 2.4e6)])
    assert [r.name for r in results] == ["universal", "bireal", "real_preprocess", "no_pre_bn"]
    assert [r.rank for r in results] == [1, 2, 3, 4]
    assert [r.equal_ops for r in results] == [True, True, False, False]
    assert [r.ops_ratio for r in results] == pytest.approx([1.0, 1.1, 9.0, 0.8])
    verdict = decision(results)
    assert (verdict["best"], verdict["second"]) == ("universal", "bireal")
    assert verdict["lead"] == pytest.approx(0.10) and verdict["decides"]
    assert [o["name"] for o in verdict["other_ops"]] == ["real_preprocess", "no_pre_bn"]
    assert "real_preprocess (9.00x the OPs, 0.9100)" in verdict["text"]
    table = results_table(results)
    assert "9.00*" in table and "1.10 " in table  # outside the band starred, inside not
    csv_rows = list(csv.DictReader(io.StringIO(results_csv(results))))
    assert [row["equal_ops"] for row in csv_rows] == ["1", "1", "0", "0"]


def test_the_band_edge_and_a_lone_reference():
    # 15 % dearer still competes (and wins); 16 % does not.
    results = _ranked([("universal", (0.80, 0.81, 0.82), 1e6),
                       ("bireal", (0.83, 0.84, 0.85), 1.15e6),
                       ("reactnet", (0.95, 0.96, 0.97), 1.16e6)])
    assert [(r.name, r.equal_ops) for r in results] == [
        ("bireal", True), ("universal", True), ("reactnet", False)]
    assert decision(results)["best"] == "bireal"
    # Nothing else at the reference's OPs: no decision, whatever the dearer one scores.
    results = _ranked([("universal", (0.80, 0.81, 0.82), 1e6),
                       ("real_preprocess", (0.95, 0.96, 0.97), 9e6)])
    verdict = decision(results)
    assert verdict["best"] == "universal" and verdict["second"] is None
    assert not verdict["decides"] and "nothing to compare at equal cost" in verdict["text"]


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

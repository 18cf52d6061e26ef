"""Tests for `ubnas_tf.viz` and `tools/plot.py` on small synthetic run directories."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tool_runs import DESIGN_PRIMITIVES, REPO

from ubnas_tf import viz
from ubnas_tf.genotype import Genotype, derive_genotype, num_edges

PRIMS = list(DESIGN_PRIMITIVES)
STEPS = 4
PNG_MAGIC = b"\x89PNG"

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz 'dot' executable not on PATH (install graphviz: apt-get install graphviz)",
)


def _assert_png(path: str | os.PathLike) -> None:
    data = Path(path).read_bytes()
    assert len(data) > 100, f"{path} is (nearly) empty"
    assert data.startswith(PNG_MAGIC), f"{path} is not a PNG"


def _arch_history(n_epochs: int = 3, warmup: int = 1, with_val: bool = True) -> dict:
    """A synthetic arch_history.json: random-walk alphas/betas, the first `warmup` epochs frozen."""
    rng = np.random.default_rng(0)
    n_e = num_edges(STEPS)
    state = {k: rng.normal(size=(n_e, len(PRIMS))) for k in ("alpha_normal", "alpha_reduce")}
    state.update({k: rng.normal(size=n_e) for k in ("beta_normal", "beta_reduce")})
    epochs = []
    for epoch in range(n_epochs):
        updates = epoch >= warmup
        if updates:
            state = {k: v + 0.5 * rng.normal(size=v.shape) for k, v in state.items()}
        genotype = derive_genotype(state["alpha_normal"], state["beta_normal"],
                                   state["alpha_reduce"], state["beta_reduce"], PRIMS, STEPS)
        logs = {"loss": 2.0 - 0.3 * epoch, "accuracy": 0.2 + 0.1 * epoch, "arch_lr": 3e-4}
        if with_val:
            logs.update({"val_loss": 2.1 - 0.3 * epoch, "val_accuracy": 0.18 + 0.1 * epoch})
        epochs.append({
            "epoch": epoch,
            "arch_updates": updates,
            "genotype": genotype.to_dict(),
            **{k: v.tolist() for k, v in state.items()},
            "logs": logs,
        })
    return {"primitives": PRIMS, "steps": STEPS, "epochs": epochs}


def _write_search_run(run_dir: Path, history: dict | None = None) -> Genotype:
    history = history or _arch_history()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "arch_history.json").write_text(json.dumps(history))
    genotype = Genotype.from_dict(history["epochs"][-1]["genotype"], primitives=PRIMS)
    genotype.save(run_dir / "genotype.json")
    return genotype


def _write_train_run(run_dir: Path, n_epochs: int = 4) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = [{"epoch": e, "logs": {"loss": 1.5 / (e + 1), "accuracy": 0.5 + 0.1 * e,
                                    "val_loss": 1.6 / (e + 1), "val_accuracy": 0.45 + 0.1 * e}}
              for e in range(n_epochs)]
    (run_dir / "history.json").write_text(json.dumps({"epochs": epochs}))


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------
# plot_run on a search run
# ------------------------------------------------------------------------------------------


@needs_dot
def test_plot_run_search_run_writes_all_plots(tmp_path: Path) -> None:
    run = tmp_path / "search"
    _write_search_run(run)
    written = viz.plot_run(str(run))
    names = [os.path.basename(p) for p in written]
    assert names == ["normal.png", "reduce.png", "alpha_normal.png", "alpha_reduce.png",
                     "curves.png"]
    for path in written:
        assert os.path.dirname(path) == str(run / "plots")
        _assert_png(path)
    assert _no_temp_files(run / "plots")
    # Only the images are left: graphviz's DOT source was cleaned up.
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(names)


@needs_dot
def test_plot_run_is_repeatable(tmp_path: Path) -> None:
    run = tmp_path / "search"
    _write_search_run(run)
    first = viz.plot_run(str(run))
    second = viz.plot_run(str(run))  # Overwrites in place.
    assert first == second
    for path in second:
        _assert_png(path)
    assert _no_temp_files(run / "plots")


def test_plot_run_without_cells_needs_no_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "search"
    _write_search_run(run)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    written = viz.plot_run(str(run), cells=False)
    assert [os.path.basename(p) for p in written] == ["alpha_normal.png", "alpha_reduce.png",
                                                      "curves.png"]
    for path in written:
        _assert_png(path)


@needs_dot
def test_plot_run_of_a_search_with_a_fixed_reduction_draws_no_reduce_cell(tmp_path: Path) -> None:
    # As GenotypeHistory writes it for a supernet whose reduction is a fixed block.
    history = _arch_history()
    history["reduction"] = "real"
    for entry in history["epochs"]:
        entry["alpha_reduce"] = entry["beta_reduce"] = None
    run = tmp_path / "search"
    _write_search_run(run, history)
    written = viz.plot_run(str(run))
    assert [os.path.basename(p) for p in written] == ["normal.png", "alpha_normal.png",
                                                      "curves.png"]


def test_plot_run_missing_dot_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "search"
    genotype = _write_search_run(run)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(RuntimeError, match=r"apt-get install graphviz"):
        viz.plot_run(str(run))
    assert not (run / "plots").exists() or not list((run / "plots").iterdir())
    with pytest.raises(RuntimeError, match=r"install graphviz \(apt-get install graphviz\)"):
        viz.plot_cell(genotype, False, str(tmp_path / "cell"))


# ------------------------------------------------------------------------------------------
# Individual plots
# ------------------------------------------------------------------------------------------


@needs_dot
@pytest.mark.parametrize("reduction", [False, True])
def test_plot_cell(tmp_path: Path, reduction: bool) -> None:
    genotype = Genotype.from_dict(_arch_history()["epochs"][-1]["genotype"], primitives=PRIMS)
    out = viz.plot_cell(genotype, reduction, str(tmp_path / "sub" / "cell"))
    assert out == str(tmp_path / "sub" / "cell.png")
    _assert_png(out)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["cell.png"]


@needs_dot
def test_plot_cell_svg_has_labels(tmp_path: Path) -> None:
    genotype = Genotype(
        normal=[("bconv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("bdil_conv_5x5", 2)],
        normal_concat=[2, 3],
        reduce=[("avg_pool_3x3", 0), ("bconv_5x5", 1), ("bconv_3x3", 1), ("skip_connect", 2)],
        reduce_concat=[2, 3],
    )
    out = viz.plot_cell(genotype, False, str(tmp_path / "normal"), fmt="svg")
    svg = html.unescape(Path(out).read_text())
    for text in ("bconv_3x3", "skip_connect", "max_pool_3x3", "bdil_conv_5x5", "c_{k-2}", "c_{k}"):
        assert text in svg
    assert viz.op_color("bconv_3x3") in svg


def test_op_color_families() -> None:
    assert viz.op_color("bconv_3x3") == viz.op_color("bconv_5x5")
    assert viz.op_color("bdil_conv_3x3") == viz.op_color("bdil_conv_5x5")
    assert viz.op_color("bdil_conv_3x3") != viz.op_color("bconv_3x3")
    assert viz.op_color("max_pool_3x3") != viz.op_color("avg_pool_3x3")
    assert viz.op_color("some_new_op") == viz.op_color("some_new_op")


@pytest.mark.parametrize("cell", ["normal", "reduce"])
def test_plot_alpha_evolution(tmp_path: Path, cell: str) -> None:
    out = viz.plot_alpha_evolution(_arch_history(), str(tmp_path / f"alpha_{cell}.png"), cell=cell)
    _assert_png(out)
    assert _no_temp_files(tmp_path)


def test_plot_alpha_evolution_single_epoch_without_beta(tmp_path: Path) -> None:
    history = _arch_history(n_epochs=1, warmup=0)
    del history["steps"]  # Inferred from the 14 alpha rows.
    for entry in history["epochs"]:
        del entry["beta_normal"], entry["genotype"]
    _assert_png(viz.plot_alpha_evolution(history, str(tmp_path / "a.png")))


def test_plot_alpha_evolution_rejects_bad_shapes(tmp_path: Path) -> None:
    history = _arch_history()
    history["epochs"][1]["alpha_normal"] = [[0.0] * (len(PRIMS) - 1)] * num_edges(STEPS)
    with pytest.raises(ValueError, match="one column per primitive"):
        viz.plot_alpha_evolution(history, str(tmp_path / "a.png"))
    history = _arch_history()
    history["steps"] = 3
    with pytest.raises(ValueError, match="'steps' = 3"):
        viz.plot_alpha_evolution(history, str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="cell must be"):
        viz.plot_alpha_evolution(_arch_history(), str(tmp_path / "a.png"), cell="both")
    assert not (tmp_path / "a.png").exists()


def test_plot_curves_arch_history_without_val(tmp_path: Path) -> None:
    out = viz.plot_curves(_arch_history(with_val=False), str(tmp_path / "curves.png"))
    _assert_png(out)


def test_plot_curves_rejects_history_without_metrics(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no epochs"):
        viz.plot_curves({"epochs": []}, str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="logged keys"):
        viz.plot_curves({"epochs": [{"epoch": 0, "logs": {"lr": 0.1}}]}, str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="'epochs' list"):
        viz.plot_curves({"logs": []}, str(tmp_path / "c.png"))


# ------------------------------------------------------------------------------------------
# plot_run on a training run / bad run dirs
# ------------------------------------------------------------------------------------------


def test_plot_run_training_history_writes_curves(tmp_path: Path) -> None:
    run = tmp_path / "train"
    _write_train_run(run)
    written = viz.plot_run(str(run))
    assert written == [str(run / "plots" / "curves.png")]
    _assert_png(written[0])


def test_plot_run_empty_dir_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        viz.plot_run(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    for name in ("genotype.json", "arch_history.json", "history.json"):
        assert name in message
    assert not (tmp_path / "plots").exists()


def test_plot_run_missing_dir_is_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.plot_run(str(missing))


def test_plot_run_malformed_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "history.json").write_text("{not json")
    with pytest.raises(ValueError, match="history.json"):
        viz.plot_run(str(tmp_path))


def test_plot_run_history_without_epochs_yet_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "arch_history.json").write_text(json.dumps(
        {"primitives": PRIMS, "steps": STEPS, "epochs": []}))
    assert viz.plot_run(str(tmp_path)) == []


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "plot.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=str(REPO),
        env={**os.environ, "MPLBACKEND": "Agg", **(env or {})},
    )


@pytest.mark.slow
@needs_dot
def test_cli_positional_and_flag(tmp_path: Path) -> None:
    run = tmp_path / "search"
    _write_search_run(run)
    result = _cli(str(run))
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert [os.path.basename(p) for p in printed] == [
        "normal.png", "reduce.png", "alpha_normal.png", "alpha_reduce.png", "curves.png"]
    for path in printed:
        _assert_png(path)

    train = tmp_path / "train"
    _write_train_run(train)
    result = _cli(f"--run_dir={train}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(train / "plots" / "curves.png")]


@pytest.mark.slow
def test_cli_errors(tmp_path: Path) -> None:
    result = _cli(str(tmp_path))  # Exists but holds nothing to plot.
    assert result.returncode != 0
    assert "history.json" in result.stderr and str(tmp_path) in result.stderr

    result = _cli()
    assert result.returncode != 0
    assert "RUN_DIR" in result.stderr

    result = _cli("--help")  # absl prints the help to stdout (and exits 1).
    assert "Usage" in result.stdout
    assert "--run_dir" in result.stdout and "--[no]cells" in result.stdout


@pytest.mark.slow
def test_cli_missing_dot(tmp_path: Path) -> None:
    run = tmp_path / "search"
    _write_search_run(run)
    env = {"PATH": str(tmp_path / "empty-bin")}
    result = _cli(str(run), env=env)
    assert result.returncode != 0
    assert "apt-get install graphviz" in result.stderr and "--nocells" in result.stderr
    result = _cli(str(run), "--nocells", env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3

"""Search -> retrain -> convert on `tfds.testing.mock_data` for imagenet2012 (streamed, from
the shipped ImageNet flagfiles as written, only shrunk) and cifar10 (in memory), through the
tools' own code paths: random examples with the real datasets' features. The streamed path
of small datasets is checked piece by piece in test_streams.py."""

from __future__ import annotations

import json

import pytest
from tool_runs import Result, mock_data_command, run_command

pytest.importorskip("dill", reason="tfds.testing.mock_data needs the `dill` package")

MOCK_EXAMPLES = 24

# Only sizes are overridden: the rest of each flagfile (dataset, input pipeline, stem, split,
# budget, recipe) runs as written.
TINY_SEARCH = ["--epochs=2", "--arch_warmup_epochs=1", "--batch_size=4", "--layers=3",
               "--init_channels=8", "--k_normal=4", "--k_reduce=4", "--patience=0",
               "--primitives=none,skip_connect,max_pool_3x3,bconv_3x3",
               "--checkpoint_every_steps=0", "--verbose=2"]
TINY_TRAIN = ["--stage1_epochs=1", "--epochs=1", "--batch_size=4", "--layers=3",
              "--init_channels=8", "--allow_unaligned_widths", "--validation_examples=4",
              "--verbose=2"]

CASES = {
    "imagenet2012": dict(search="flags/imagenet_search.flags", train="flags/imagenet_train.flags",
                         search_extra=["--max_examples=24", "--heldout_examples=8"],
                         train_extra=["--max_examples=24", "--stem_multiplier=1"],
                         image_shape=[224, 224, 3], streamed=True),
    "cifar10": dict(search="flags/cifar10.flags", train="flags/cifar10_train.flags",
                    search_extra=["--max_examples=24"],
                    train_extra=["--max_examples=24", "--cutout=8"],
                    image_shape=[32, 32, 3], streamed=False),
}


def _run(tool: str, args: list[str], timeout: float = 600) -> Result:
    return run_command(mock_data_command(tool, MOCK_EXAMPLES) + args, timeout=timeout)


@pytest.mark.parametrize("case", sorted(CASES))
def test_search_train_convert_on_mock_data(tmp_path, case):
    spec = CASES[case]
    search_dir, train_dir = tmp_path / "search", tmp_path / "train"
    res = _run("search", [f"--flagfile={spec['search']}", f"--output_dir={search_dir}",
                          *TINY_SEARCH, *spec["search_extra"]])
    assert res.returncode == 0, str(res)
    assert ("streamed from tensorflow-datasets" in res.stdout) == spec["streamed"], str(res)
    summary = json.loads((search_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["genotype"]
    if case == "imagenet2012":
        # The proxy split: a held-out part smaller than the weight part.
        assert (summary["train_images"], summary["heldout_images"]) == (16, 8)

    res = _run("train", [f"--flagfile={spec['train']}", f"--output_dir={train_dir}",
                         f"--genotype={search_dir / 'genotype.json'}", *TINY_TRAIN,
                         *spec["train_extra"]])
    assert res.returncode == 0, str(res)
    summary = json.loads((train_dir / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["train_images"] == 24 - 2  # 4 validation images capped at a tenth

    tflite = tmp_path / "model.tflite"
    res = _run("convert", [f"--model={train_dir / 'model_best.keras'}", f"--output={tflite}",
                           f"--dataset={case.split('_')[0]}", "--verify_examples=4",
                           "--min_agreement=0.5"])
    assert res.returncode == 0, str(res)
    assert tflite.stat().st_size > 0

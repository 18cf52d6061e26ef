r"""What a trained supernet thinks of a genotype: one-shot accuracy and log-probability.

Two ways a weight-sharing search could rank genotypes, measured so that their rank
agreement with retrained accuracy (Kendall's tau) says where the search loses the signal:

* **One-shot accuracy**: held-out accuracy of the supernet's shared weights with every
  edge restricted to the genotype: op weights one-hot on the genotype's op, edge weights
  1/2 on its two inputs of each node and 0 elsewhere. The halves keep a node on the scale
  the supernet was trained at: its edge weights softmax(beta) sum to 1 over a node's
  inputs. (Weights of 1, the evaluation network's plain sum, doubled every node and left
  the supernet at chance: 10 to 18 % held-out accuracy for 11 random genotypes and 17 % for
  the search's own derived genotype, against 76 % for the mixed architecture.) The partial-channel structure stays (1/K of the
  channels through the op, the rest bypassed), as it is part of the supernet. BatchNorm
  uses the statistics of each batch (the moving statistics belong to the mixed
  architecture), and the variables that a training-mode pass updates are restored after.
* **Log-probability** under the final architecture weights: the sum over both cells' kept
  edges of \\(\log \mathrm{softmax}(\alpha_e)_{o} + \log \mathrm{softmax}_{node}(\beta)_e\\),
  the log-probability of the genotype's ops and edges under the search's distributions
  (the reduce cell is left out when the module config fixes it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ubnas_tf.data import get_info
from ubnas_tf.data.datasets import load_arrays, split_search
from ubnas_tf.data.pipelines import normalize
from ubnas_tf.genotype import Genotype, edge_index, node_inputs, num_edges
from ubnas_tf.io_utils import read_json
from ubnas_tf.search.network import SearchNetwork

__all__ = ["genotype_architecture", "genotype_log_prob", "load_supernet", "one_shot_accuracy"]


def _cell_arrays(edges, primitives: Sequence[str], steps: int) -> tuple[np.ndarray, np.ndarray]:
    ops = np.zeros((num_edges(steps), len(primitives)), np.float32)
    kept = np.zeros((num_edges(steps),), np.float32)
    for k, (op, source) in enumerate(edges):
        e = edge_index(k // 2, source)
        ops[e, list(primitives).index(op)] = 1.0
        kept[e] = 0.5  # two inputs per node, summing to 1 as softmax(beta) does
    return ops, kept


def genotype_architecture(genotype: Genotype, primitives: Sequence[str],
                          steps: int = 4) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """The `SearchNetwork.forward` architecture that restricts every edge to `genotype`."""
    return {kind: tuple(tf.constant(a) for a in _cell_arrays(edges, primitives, steps))
            for kind, edges in (("normal", genotype.normal), ("reduce", genotype.reduce))}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def genotype_log_prob(genotype: Genotype, arch_values: dict[str, np.ndarray],
                      primitives: Sequence[str], steps: int = 4,
                      searched_reduction: bool = True) -> float:
    """Log-probability of `genotype` under raw alpha/beta logits (`SearchNetwork.arch_values`)."""
    total = 0.0
    cells = [("normal", genotype.normal)] + ([("reduce", genotype.reduce)]
                                              if searched_reduction else [])
    for kind, edges in cells:
        log_p_ops = _log_softmax(arch_values[f"alpha_{kind}"])
        beta = np.asarray(arch_values[f"beta_{kind}"], np.float64)
        log_w = np.zeros_like(beta)
        for _, sl in node_inputs(steps):
            log_w[sl] = _log_softmax(beta[sl])
        ops, kept = _cell_arrays(edges, primitives, steps)
        total += float((ops * log_p_ops).sum() + log_w[kept > 0].sum())
    return total


def one_shot_accuracy(model, genotype: Genotype, images: np.ndarray, labels: np.ndarray,
                      batch_size: int = 500) -> float:
    """Accuracy of the supernet `model` (a built `SearchNetwork`) restricted to `genotype`
    on ``images`` (normalised, NHWC) and integer ``labels``; the model is left unchanged."""
    architecture = genotype_architecture(genotype, model.primitives, model.steps)
    saved = [(v, v.numpy()) for v in model.non_trainable_variables]
    correct = 0
    try:
        for start in range(0, len(images), batch_size):
            logits = model.forward(tf.constant(images[start:start + batch_size]), training=True,
                                   architecture=architecture)
            correct += int(np.sum(np.argmax(logits.numpy(), -1)
                                  == np.reshape(labels[start:start + batch_size], [-1])))
    finally:
        for v, value in saved:
            v.assign(value)
    return correct / len(images)


def load_supernet(search_dir: str):
    """The trained supernet of a finished `tools/search.py` run directory (its last
    checkpoint) and its held-out images and labels (normalised), as the search split them.

    Returns ``(model, images, labels)``. Raises FileNotFoundError naming what is missing.
    """
    flags_path = os.path.join(search_dir, "flags.json")
    if not os.path.exists(flags_path):
        raise FileNotFoundError(f"{search_dir} is not a search run directory (no flags.json).")
    f = read_json(flags_path)["flags"]
    checkpoint = tf.train.latest_checkpoint(os.path.join(search_dir, "checkpoints"))
    if checkpoint is None:
        raise FileNotFoundError(f"{search_dir}/checkpoints holds no checkpoint of the supernet.")
    info = get_info(f["dataset"])
    model = SearchNetwork(info.num_classes, f["init_channels"], f["layers"],
                          stem_strides=f["stem_strides"], primitives=f.get("primitives"),
                          k_normal=f["k_normal"], k_reduce=f["k_reduce"],
                          config=f["module_config"], search_weights=f["search_weights"],
                          seed=f["seed"])
    model.build_network(info.image_shape)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    x, y = load_arrays(f["dataset"], "train", f.get("data_dir"), f.get("max_examples"))
    _, (x_v, y_v) = split_search(x, y, f["seed"], f.get("heldout_examples"))
    return model, normalize(x_v, info).numpy(), np.asarray(y_v)

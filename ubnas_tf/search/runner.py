"""A complete, resumable search run: data, supernet, `model.fit`, results on disk."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf

from ubnas_tf.config import RunConfig, option
from ubnas_tf.data import get_info
from ubnas_tf.data.inputs import search_inputs
from ubnas_tf.distribute import make_strategy, weights_digest
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_json
from ubnas_tf.progress import ProgressBar
from ubnas_tf.rundir import (
    CheckpointCallback,
    NonFiniteGuard,
    ResumeError,
    RunCheckpoints,
    RunDirectory,
    fit_resumable,
)
from ubnas_tf.search.budget import CostTable
from ubnas_tf.search.callbacks import (
    ArchitectureFigures,
    ArchitectureWarmup,
    GenotypeEarlyStopping,
    GenotypeHistory,
)
from ubnas_tf.search.network import (
    ArchitectureObjective,
    SearchNetwork,
    arch_learning_rate,
    default_arch_optimizer,
    default_weight_optimizer,
)

__all__ = ["SearchConfig", "run_search"]


@dataclasses.dataclass(kw_only=True)
class SearchConfig(RunConfig):
    """Everything a search run needs: `RunConfig` (the data, devices and run directory) and
    the search's own settings. Each option is also a flag of tools/search.py
    (`ubnas_tf.flags.define_search_flags`), with the default and help text given here."""

    layers: int = option(8, "Number of cells in the supernet (reductions at 1/3, 2/3).",
                         lower_bound=3)
    init_channels: int = option(16, "Width (channels) of the first cells.", lower_bound=1)
    stem_strides: int = option(
        1, "Total stride of the supernet's real stem: 1, 2, 4 or 8, one stride-2 3x3 conv per "
           "halving (8 for 224x224 ImageNet, as PC-DARTS).")
    heldout_examples: int | None = option(
        None, "Training images held out for the architecture steps (the rest train the "
              "weights); default: half of them. Smaller than the weight half in a "
              "PC-DARTS-style proxy search, where it cycles.", lower_bound=1)
    primitives: tuple[str, ...] | None = option(
        None, "Comma-separated candidate ops to search (default: all of none, skip_connect, "
              "max_pool_3x3, avg_pool_3x3, bconv_3x3, bconv_5x5, bdil_conv_3x3, "
              "bdil_conv_5x5).")
    k_normal: int = option(
        8, "Channel sampling ratio K of normal cells: 1/K of the channels go through the "
           "candidate ops. 8 and 4 retrain equally well, 8 searches faster (docs/studies.md).",
        lower_bound=1)
    k_reduce: int = option(
        4, "Channel sampling ratio K of reduction cells. 4 retrains about half a point better "
           "than 8 (docs/studies.md).", lower_bound=1)
    arch_warmup_epochs: int = option(
        15, "Epochs of weight-only training before the architecture starts to move.",
        lower_bound=0)
    patience: int = option(
        5, "Stop once the derived genotype has not changed for this many epochs (and is "
           "decided, see --decided_threshold); 0: never stop early on a stable genotype.",
        lower_bound=0)
    max_parameter_free: int = option(
        2, "Collapse guard: stop when the normal cell keeps more parameter-free ops than this "
           "(and their weight has doubled relative to uniform). Off with --target_mops: the "
           "budget then sets the share of cheap ops.", lower_bound=0)
    module_config: str = option(
        "universal", "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).")
    search_weights: str = option(
        "binary", "Binary weights in the search ops (default) or latent real ones (EBNAS).",
        choices=("binary", "real"))
    weight_lr: float = option(2e-3, "Peak learning rate of the network weights (cosine decay).")
    arch_lr: float | None = option(
        None, "Learning rate of the architecture Adam optimiser; default: --arch_travel "
              "divided by the number of architecture steps "
              "(ubnas_tf.search.arch_learning_rate).")
    arch_travel: float = option(
        6.0, "How far (in logits) Adam may move alpha over the whole search when --arch_lr is "
             "not given: lr = travel / architecture steps. 6 is what DARTS' own schedule "
             "allows (3e-4 x 19,550 steps).")
    discretization_weight: float = option(
        1.5, "Weight of EBNAS' discretisation loss on alpha and beta, ramped in linearly over "
             "the architecture steps (EBNAS uses 1.5); 0 disables it.", lower_bound=0.0)
    decided_threshold: float = option(
        0.6, "Early stopping needs a decided architecture: the mean weight of the derived op "
             "on the kept edges, among the ops that can be derived (all but none), must reach "
             "this (uniform over 7 such ops: 0.143).", lower_bound=0.0, upper_bound=1.0)
    target_mops: float | None = option(
        None, "Budget in MOPs (BOPs/64 + FLOPs, as tools/summary.py counts) of the evaluation "
              "network given by --target_train_flagfile; adds the differentiable "
              "expected-cost term cost_weight * (E/target - 1)^2 to the architecture loss. "
              "Default: no budget.")
    target_latency_ms: float | None = option(
        None, "Budget in milliseconds of batch-1 LCE inference of the evaluation network given "
              "by --target_train_flagfile, predicted by --latency_table (tools/latency_table.py)"
              "; the same expected-cost term as --target_mops, in ms. Default: no budget.")
    latency_table: str | None = option(
        None, "The latency table (tools/latency_table.py) of the network of "
              "--target_train_flagfile, on the device to budget for; used with "
              "--target_latency_ms.")
    target_train_flagfile: str | None = option(
        None, "The retraining flagfile (tools/train.py) whose network --target_mops or "
              "--target_latency_ms refers to: its --layers, --init_channels, "
              "--stem_multiplier and --stem_strides are read; the module structure is the "
              "search's --module_config (a flagfile naming another one is refused).")
    # The per-op costs of that network (`ubnas_tf.search.budget.build_cost_table` or
    # `latency_cost_table`); needed with a budget. No flag: tools/search.py builds it.
    cost_table: CostTable | None = dataclasses.field(default=None, repr=False)
    cost_weight: float = option(
        50.0, "Weight of the budget term (with --target_mops or --target_latency_ms); see "
              "ubnas_tf.search.ArchitectureObjective for why 50.", lower_bound=0.0)
    augment: bool = option(False, "Random crop and flip on both search halves.")


class _Throughput(tf.keras.callbacks.Callback):
    """Steps per second of each epoch (all of them, and those with architecture updates);
    a resumed epoch counts the steps it ran."""

    def __init__(self):
        super().__init__()
        self.epoch_rates: list[float] = []
        self.arch_epoch_rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps = int(batch) + 1

    def on_epoch_end(self, epoch, logs=None):
        rate = self._steps / (time.perf_counter() - self._t)
        self.epoch_rates.append(rate)
        if self.model.arch_updates_enabled:
            self.arch_epoch_rates.append(rate)


def budget_target(cfg: SearchConfig) -> float | None:
    """The search's budget in its cost table's unit (None without one); raises ValueError
    for two budgets, or one without a table of the matching unit."""
    if cfg.target_mops is not None and cfg.target_latency_ms is not None:
        raise ValueError("SearchConfig takes one budget: target_mops or target_latency_ms.")
    target, unit = ((cfg.target_mops, "MOPs") if cfg.target_latency_ms is None
                    else (cfg.target_latency_ms, "ms"))
    if target is not None and (cfg.cost_table is None or cfg.cost_table.unit != unit):
        raise ValueError(f"A budget in {unit} needs SearchConfig.cost_table in {unit} "
                         "(ubnas_tf.search.budget.build_cost_table / latency_cost_table).")
    return target


def budget_figures(cfg: SearchConfig, cost_table: CostTable | None, genotype,
                   records: list[dict]) -> dict:
    """The summary's budget entries, named by the unit: ``target_mops``, ``expected_mops``
    and ``genotype_mops`` (the derived network's cost), or ``..._latency_ms``; None
    without a budget."""
    key = cost_table.key if cost_table is not None else "mops"
    return {
        f"target_{key}": budget_target(cfg),
        # Records written before the key was unit-neutral say "expected_mops".
        f"expected_{key}": (records[-1].get("expected_cost", records[-1].get("expected_mops"))
                            if records else None),
        f"genotype_{key}": cost_table.genotype_cost(genotype) if cost_table is not None else None,
    }


def run_search(cfg: SearchConfig, run: RunDirectory) -> dict:
    """Runs (or resumes) a search in `run`; returns the summary also saved as summary.json.

    The caller has validated `cfg` and called ``run.prepare``.
    """
    t_start = time.time()
    cfg.apply_to_process()
    info = get_info(cfg.dataset)

    print(f"Loading {cfg.dataset} ...", flush=True)
    inputs = search_inputs(cfg.dataset, cfg.data_dir, cfg.max_examples, cfg.heldout_examples,
                           cfg.batch_size, cfg.seed, cfg.epochs, augment=cfg.augment,
                           input_pipeline=cfg.input_pipeline)
    steps_per_epoch = inputs.steps_per_epoch
    print(f"  search split: {inputs.train_examples} training / {inputs.heldout_examples} "
          f"held-out images, {steps_per_epoch} steps per epoch"
          + (" (streamed from tensorflow-datasets)" if inputs.streamed else ""), flush=True)

    state = run.read_state() or {}
    initial_epoch = int(state.get("completed_epochs", 0))
    initial_step = int(state.get("epoch_step", 0))

    arch_steps = (cfg.epochs - cfg.arch_warmup_epochs) * steps_per_epoch
    arch_lr = cfg.arch_lr if cfg.arch_lr is not None else arch_learning_rate(arch_steps, cfg.arch_travel)
    target = budget_target(cfg)
    cost_table = cfg.cost_table if target is not None else None
    if target is not None:
        low, high = cost_table.cost_range()
        print(f"Budget: {target} {cost_table.unit} for the network of "
              f"{cfg.target_train_flagfile} (derivable: {low:.3f} to {high:.3f} "
              f"{cost_table.unit})", flush=True)
    objective = ArchitectureObjective(
        discretization_weight=cfg.discretization_weight, ramp_steps=arch_steps,
        cost_table=cost_table, target=target, cost_weight=cfg.cost_weight)
    print(f"Architecture: {arch_steps} steps at lr {arch_lr:.3g}, discretisation weight "
          f"{cfg.discretization_weight} ramped over them", flush=True)

    strategy = make_strategy(cfg.distribute)
    with strategy.scope():
        model = SearchNetwork(
            info.num_classes, cfg.init_channels, cfg.layers, stem_strides=cfg.stem_strides,
            primitives=cfg.primitives,
            k_normal=cfg.k_normal, k_reduce=cfg.k_reduce, config=cfg.module_config,
            search_weights=cfg.search_weights, seed=cfg.seed,
        )
        schedule = tf.keras.optimizers.schedules.CosineDecay(
            cfg.weight_lr, decay_steps=cfg.epochs * steps_per_epoch, alpha=0.01)
        model.compile(optimizer=default_weight_optimizer(schedule),
                      arch_optimizer=default_arch_optimizer(arch_lr),
                      arch_objective=objective, steps_per_execution=cfg.steps_per_execution)
        model.build_network(info.image_shape)
    n_weights = sum(int(np.prod(v.shape)) for v in model.weight_variables)
    print(f"Supernet: {cfg.layers} cells, {cfg.init_channels} initial channels, "
          f"{n_weights:,} weights, primitives {list(model.primitives)}", flush=True)

    history = GenotypeHistory(run.join("arch_history.json"), verbose=cfg.verbose > 0)
    stopper = GenotypeEarlyStopping(cfg.patience, cfg.epochs, cfg.max_parameter_free,
                                    decided_threshold=cfg.decided_threshold,
                                    collapse_guard=cfg.target_mops is None,
                                    verbose=cfg.verbose > 0)
    # The early-stopping counters are saved and restored with the weights (the stopper is a
    # PythonState), so whichever checkpoint a resume loads, it gets that epoch's counters.
    checkpoints = RunCheckpoints(
        run.checkpoint_dir, dict(model=model, optimizer=model.optimizer,
                                 arch_optimizer=model.arch_optimizer, early_stopping=stopper),
        steps_per_epoch, max_to_keep=2, restore_from=run.shared("checkpoints"))
    resumed_from = None
    if initial_epoch or initial_step:
        resumed_from = checkpoints.restore(state.get("checkpoint"))
        if resumed_from is None:
            # A failed restore may have assigned part of the variables: never carry on with them.
            raise ResumeError(f"No checkpoint in {run.checkpoint_dir} could be loaded (see the "
                              "warnings above; a checkpoint written by an older ubnas-tf lacks "
                              "state this version keeps there); pass --overwrite to start afresh.")
        restored, initial_epoch, initial_step = resumed_from
        within = f", step {initial_step} of {steps_per_epoch}" if initial_step else ""
        print(f"Resuming from {restored} (epoch {initial_epoch}{within}).", flush=True)
    history.load(before_epoch=initial_epoch)

    throughput = _Throughput()
    checkpointing = CheckpointCallback(run, checkpoints, every_steps=cfg.checkpoint_every_steps)
    callbacks = [
        ArchitectureWarmup(cfg.arch_warmup_epochs),
        NonFiniteGuard(),
        throughput,
        # The losses and accuracies within 120 columns; the epoch's last line comes before
        # the genotype that `history` prints.
        ProgressBar(),
        # Before every callback that reads the figures from the epoch's logs: `history`,
        # the checkpoint's finiteness check, TensorBoard and fit's History.
        ArchitectureFigures(),
        history,
        stopper,  # before the checkpoint, which saves the counters of the epoch it ends
        checkpointing,
        # No graph: writing the bilevel step's (6 MB for the quick start) took 15 to 50 s at
        # the end of the first step, and Keras warned that on_train_batch_end was slow.
        tf.keras.callbacks.TensorBoard(run.join("tensorboard"), profile_batch=0,
                                       write_graph=False),
    ]
    if initial_epoch < cfg.epochs and stopper.stopped_epoch is None:
        fit_resumable(model, inputs.dataset, epochs=cfg.epochs, initial_epoch=initial_epoch,
                      initial_step=initial_step, steps_per_epoch=steps_per_epoch,
                      callbacks=callbacks, checkpoint_callback=checkpointing, verbose=cfg.verbose)

    genotype: Genotype = stopper.final_genotype or model.genotype()
    genotype.save(run.join("genotype.json"))
    epochs_run = stopper.epochs_run or initial_epoch
    # The first epoch of a process includes tracing the step: left out when there are others.
    arch_rates = throughput.arch_epoch_rates[1:] or throughput.arch_epoch_rates
    all_rates = throughput.epoch_rates[1:] or throughput.epoch_rates
    summary = {
        "genotype": genotype.to_dict(),
        "epochs_run": epochs_run,
        "max_epochs": cfg.epochs,
        "stopped_epoch": stopper.stopped_epoch + 1 if stopper.stopped_epoch is not None else None,
        "stop_reason": stopper.stop_reason,
        "epochs_saved": max(0, cfg.epochs - epochs_run),
        "wall_time_s": round(time.time() - t_start, 1),
        "images_per_second": round(cfg.batch_size * float(np.median(all_rates)), 2)
        if all_rates else None,
        "search_step_images_per_second": round(cfg.batch_size * float(np.median(arch_rates)), 2)
        if arch_rates else None,
        "train_images": inputs.train_examples,
        "heldout_images": inputs.heldout_examples,
        "stop_rule": stopper.stop_message or f"ran all {cfg.epochs} epochs without an early stop",
        "stop_figures": stopper.stop_figures,
        "decisiveness": history.records[-1]["decisiveness"] if history.records else None,
        "decided_threshold": cfg.decided_threshold,
        "arch_lr": arch_lr,
        "arch_steps": arch_steps,
        **budget_figures(cfg, cost_table, genotype, history.records),
        "final_logs": history.records[-1]["logs"] if history.records else {},
        # What was restored (after any fallback): completed epochs, steps into the next one.
        "resumed_from_epoch": resumed_from[1] if resumed_from else None,
        "resumed_from_step": resumed_from[2] if resumed_from else None,
        # Equal on every worker of a multi-worker run (computed by all: a collective read).
        "weights_digest": weights_digest(model.weights),
    }
    atomic_write_json(run.join("summary.json"), summary)
    run.write_state({**(run.read_state() or {}), "finished": True})
    return summary

"""Two-stage retraining of an evaluation network with plain `model.fit`, resumable.

Stage 1 trains real activations with binary weights; stage 2 the fully binary network,
warm-started from stage 1 (the usual BNN recipe). Adam with cosine decay, no weight decay on
latent binary weights (they are clipped instead), label smoothing, crop/flip and cutout,
optional auxiliary head and drop-path.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import larq as lq
import numpy as np
import tensorflow as tf

from ubnas_tf.config import RunConfig, option, required
from ubnas_tf.cost import model_cost
from ubnas_tf.data import get_info
from ubnas_tf.data.inputs import train_inputs
from ubnas_tf.distribute import make_strategy, weights_digest
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_output, atomic_write_json, read_json
from ubnas_tf.nets.eval_network import EvalNetworkConfig, build_eval_network, inference_model
from ubnas_tf.nets.layers import DropPathSchedule
from ubnas_tf.progress import ProgressBar
from ubnas_tf.quantizers import calibrate_thresholds
from ubnas_tf.rundir import (
    CheckpointCallback,
    NonFiniteGuard,
    ResumeError,
    RunCheckpoints,
    RunDirectory,
    fit_resumable,
)

__all__ = ["TrainConfig", "carry_weights", "run_training", "smoothed_sparse_crossentropy",
           "save_model_atomic"]


@dataclasses.dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """Everything a retraining run needs: `RunConfig` (the data, devices and run directory)
    and the evaluation network and its recipe. Each option is also a flag of tools/train.py
    (`ubnas_tf.flags.define_train_flags`), with the default and help text given here."""

    genotype: str = required("The genotype.json of a search run, to retrain.")
    layers: int = option(8, "Number of cells in the evaluation network.", lower_bound=3)
    init_channels: int = option(
        32, "Width of the first cells; every cell width must be a multiple of 32 (LCE bit "
            "packing) unless --allow_unaligned_widths.", lower_bound=1)
    stem_multiplier: int = option(3, "The real stem outputs this many times --init_channels.",
                                  lower_bound=1)
    stem_strides: int = option(
        1, "Total stride of the real stem: 1, 2, 4 or 8 (one stride-2 conv each).")
    stage1_epochs: int = option(
        0, "Epochs of stage 1 (real activations, binary weights); 0 skips it.", lower_bound=0)
    validation_examples: int = option(
        5000, "Training examples held out to pick the best model (not the test set).",
        lower_bound=0)
    learning_rate: float = option(2e-3, "Peak Adam learning rate (cosine decay per stage).")
    weight_decay: float = option(
        0.0, "Decoupled weight decay on real weights (never on latent binary weights).",
        lower_bound=0.0)
    label_smoothing: float = option(0.1, "Label smoothing of the cross-entropy.")
    cutout: int = option(0, "Side of the cutout square in pixels; 0 disables cutout.",
                         lower_bound=0)
    augment: bool = option(True, "Random crop (padding = image size / 8) and flip.")
    auxiliary_weight: float = option(
        0.0, "Weight of the auxiliary head's loss; 0 builds no auxiliary head.", lower_bound=0.0)
    drop_path: float = option(0.0, "Maximum drop-path rate, ramped linearly over each stage.")
    module_config: str = option(
        "universal", "Binary module structure (a name in ubnas_tf.modules.MODULE_CONFIGS).")
    calibrate_thresholds: bool = option(
        True, "Start stage 2's learnable sign thresholds (module structures with "
              "learnable_threshold_approx_sign) at the mean of their inputs on one training "
              "batch, instead of at 0; no effect on other structures or without stage 1.")
    allow_unaligned_widths: bool = option(
        False, "Accept binary convs whose input channels are not multiples of 32 (warns).")


def smoothed_sparse_crossentropy(label_smoothing: float, num_classes: int):
    """Cross-entropy on logits with integer labels and label smoothing."""

    def loss(y_true, y_pred):
        y = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), num_classes)
        return tf.keras.losses.categorical_crossentropy(y, y_pred, from_logits=True,
                                                        label_smoothing=label_smoothing)

    return loss


def save_model_atomic(model: tf.keras.Model, path: str) -> None:
    """Saves a `.keras` file under a temporary name and renames it into place."""
    # The optimizer is not saved: .keras exports are for inference and conversion.
    model = tf.keras.Model(model.inputs, model.outputs, name=model.name) if model.optimizer else model
    with atomic_output(path) as tmp:
        model.save(tmp)


def carry_weights(weights: dict[str, np.ndarray], model: tf.keras.Model) -> list[str]:
    """Loads `weights` (variable name -> value, e.g. a stage-1 model's) into `model` by name.

    Stage 2 may have variables that stage 1 lacks: a learnable-threshold sign (``reactnet``)
    exists only where activations are binary. Those keep their initial values (threshold 0,
    a plain sign), which is what a positional `set_weights` cannot do. Returns the names
    left at their initial values; raises ValueError if a weight of `weights` has no variable
    of the same name and shape in `model` (the models are not two stages of one network).
    """
    variables = {v.name: v for v in model.weights}
    unmatched = [name for name, value in weights.items()
                 if name not in variables or tuple(variables[name].shape) != np.shape(value)]
    if unmatched:
        raise ValueError(f"{len(unmatched)} weights have no variable of the same name and shape "
                         f"in {model.name}: {', '.join(unmatched[:3])}"
                         f"{', ...' if len(unmatched) > 3 else ''}")
    for name, value in weights.items():
        variables[name].assign(value)
    return [name for name in variables if name not in weights]


def compile_for_training(model: tf.keras.Model, learning_rate: float, decay_steps: int,
                         label_smoothing: float, num_classes: int, auxiliary_weight: float = 0.0,
                         weight_decay: float = 0.0, steps_per_execution: int = 1,
                         jit_compile: bool = False) -> tf.keras.optimizers.Optimizer:
    """Compiles `model` for one stage of retraining; returns its optimizer.

    Adam with a cosine decay of `learning_rate` over `decay_steps`, decoupled weight decay on
    real weights only, label-smoothed cross-entropy on logits (plus the auxiliary head's,
    weighted `auxiliary_weight`, when the model has two outputs) and accuracy.
    """
    aux = auxiliary_weight > 0
    schedule = tf.keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    optimizer = tf.keras.optimizers.Adam(schedule, weight_decay=weight_decay or None)
    if weight_decay:
        # Decay pulls latent binary weights towards sign flips: exclude them (and BN).
        optimizer.exclude_from_weight_decay(
            var_list=_binary_kernels(model),
            var_names=["gamma", "beta", "bias", "threshold", "alpha"])
    loss = smoothed_sparse_crossentropy(label_smoothing, num_classes)
    accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer,
        loss=[loss, loss] if aux else loss,
        loss_weights=[1.0, auxiliary_weight] if aux else None,
        metrics=[[accuracy], []] if aux else [accuracy],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return optimizer


def _binary_kernels(model: tf.keras.Model) -> list[tf.Variable]:
    return [layer.kernel for layer in model._flatten_layers()
            if isinstance(layer, lq.layers.QuantConv2D) and layer.kernel_quantizer is not None]


class _History(tf.keras.callbacks.Callback):
    """Writes every epoch's logs to history.json (atomically), across stages and resumes.

    An epoch's record replaces those of the same and later epochs, so the epochs that a
    resume runs again (also after a fallback to an older checkpoint) are not listed twice.
    Keras' `CSVLogger(append=True)` would list them twice, writes in place and knows no stage.
    """

    def __init__(self, path: str, stage: int, epoch_offset: int):
        super().__init__()
        self.path, self.stage, self.offset = path, stage, epoch_offset
        self.records = read_json(path)["epochs"] if os.path.exists(path) else []

    def on_epoch_end(self, epoch, logs=None):
        e = self.offset + epoch
        self.records = [r for r in self.records if r["epoch"] < e]
        self.records.append({"epoch": e, "stage": self.stage,
                             "logs": {k: float(v) for k, v in (logs or {}).items()}})
        atomic_write_json(self.path, {"epochs": self.records})


class _BestExport(tf.keras.callbacks.Callback):
    """Exports the inference model whenever validation accuracy improves (this stage).

    `best` is a variable of the stage's checkpoint, so a resumed stage compares with the
    best of the epochs before the checkpoint it restored (also after a fallback to an older
    one). Keras' `ModelCheckpoint(save_best_only=True)` does not do the job: it saves the
    training model (with the auxiliary head), in place rather than atomically, and keeps its
    best value out of the checkpoint.
    """

    def __init__(self, path: str, best: tf.Variable):
        super().__init__()
        self.path, self.best = path, best

    def on_epoch_end(self, epoch, logs=None):
        acc = (logs or {}).get("val_accuracy", (logs or {}).get("val_logits_accuracy"))
        if acc is not None and float(acc) > float(self.best.numpy()):
            self.best.assign(float(acc))
            save_model_atomic(inference_model(self.model), self.path)


def _same_weights(a: tf.keras.Model, b: tf.keras.Model) -> bool:
    """Whether two models of one architecture hold bit-identical weights."""
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


def run_training(cfg: TrainConfig, run: RunDirectory) -> dict:
    """Runs (or resumes) two-stage retraining; returns the summary saved as summary.json."""
    t0 = time.time()
    cfg.apply_to_process()
    info = get_info(cfg.dataset)
    genotype = Genotype.load(cfg.genotype)
    genotype.save(run.join("genotype.json"))

    print(f"Loading {cfg.dataset} ...", flush=True)
    inputs = train_inputs(cfg.dataset, cfg.data_dir, cfg.max_examples, cfg.validation_examples,
                          cfg.batch_size, cfg.seed, cfg.input_pipeline)
    steps = inputs.train_examples // cfg.batch_size
    print(f"  {inputs.train_examples} training, {inputs.validation_examples} validation, "
          f"{inputs.test_examples} test images; {steps} steps per epoch"
          + (" (streamed from tensorflow-datasets)" if inputs.streamed else ""), flush=True)
    aux = cfg.auxiliary_weight > 0

    def with_aux(ds):
        return ds.map(lambda a, b: (a, (b, b))) if aux else ds

    val_ds = with_aux(inputs.validation) if inputs.validation is not None else None
    strategy = make_strategy(cfg.distribute)
    stages = [(1, cfg.stage1_epochs, False), (2, cfg.epochs, True)]
    stages = [s for s in stages if s[1] > 0]
    last_stage = stages[-1][0]
    state = run.read_state() or {}
    done_stage = int(state.get("stage", 0)) if state.get("stage_finished") else int(state.get("stage", 1)) - 1
    previous_weights = None
    best_path = run.join("model_best.keras")
    # The best validation accuracy is tracked (and model_best.keras exported) in the last stage
    # only, and saved in that stage's checkpoints; -1 until a validated epoch improves on it.
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_accuracy")
    model = None
    for stage, epochs, binary in stages:
        with strategy.scope():
            net_cfg = EvalNetworkConfig(cfg.layers, cfg.init_channels, cfg.stem_multiplier,
                                        cfg.stem_strides, aux, cfg.drop_path, binary)
            model = build_eval_network(genotype, info.image_shape, info.num_classes, net_cfg,
                                       cfg.module_config, cfg.allow_unaligned_widths)
            optimizer = compile_for_training(
                model, cfg.learning_rate, epochs * steps, cfg.label_smoothing, info.num_classes,
                cfg.auxiliary_weight, cfg.weight_decay, cfg.steps_per_execution)
        ckpt_dir = run.join("checkpoints", f"stage{stage}")
        tracked = {"best_val_accuracy": best} if stage == last_stage else {}
        checkpoints = RunCheckpoints(ckpt_dir, dict(model=model, optimizer=optimizer, **tracked),
                                     steps, max_to_keep=2,
                                     restore_from=run.shared("checkpoints", f"stage{stage}"))
        if stage <= done_stage:
            # Completed before an interruption: reload its final weights, which the next stage
            # starts from (as in an uninterrupted run: weights only, no optimizer state) or
            # which are the final model. Restoring into the next stage's model instead would
            # also restore this stage's optimizer (a dependency of the compiled model): its
            # step count would put the next stage's cosine schedule at its end.
            if checkpoints.restore() is None:
                raise ResumeError(f"No checkpoint of the completed stage {stage} in {ckpt_dir} "
                                  "could be loaded; pass --overwrite to start afresh.")
            previous_weights = {v.name: v.numpy() for v in model.weights}
            continue
        initial_epoch = initial_step = 0
        restored = None
        if int(state.get("stage", 0)) == stage and (state.get("completed_epochs")
                                                    or state.get("epoch_step")):
            restored = checkpoints.restore(state.get("checkpoint"))
            if restored is None:
                # A failed restore may have assigned part of the variables: never go on with them.
                raise ResumeError(f"No checkpoint of stage {stage} in {ckpt_dir} could be loaded "
                                  "(see the warnings above; a checkpoint written by an older "
                                  "ubnas-tf lacks state this version keeps there); pass "
                                  "--overwrite to start afresh.")
            path, initial_epoch, initial_step = restored
            within = f", step {initial_step} of {steps}" if initial_step else ""
            print(f"Resuming stage {stage} from {path} (epoch {initial_epoch}{within}).")
        if restored is None:
            # A stage starting afresh must not inherit the checkpoints and logs of an attempt
            # killed before its first epoch was recorded: a later fallback could restore them.
            checkpoints.reset()
            shutil.rmtree(run.join("tensorboard", f"stage{stage}"), ignore_errors=True)

        def make_dataset(start_epoch: int, start_step: int, stage=stage,
                         epochs=epochs) -> tf.data.Dataset:
            return with_aux(inputs.train(cfg.seed + stage, epochs, cfg.augment, cfg.cutout,
                                         start_epoch, start_step))

        if restored is None and previous_weights is not None:
            fresh = carry_weights(previous_weights, model)
            notes = []
            if fresh and cfg.calibrate_thresholds:
                # The stage's own first batch, unsharded: the same on every worker.
                calibrated = set(calibrate_thresholds(model, next(iter(make_dataset(0, 0)))[0]))
                fresh = [name for name in fresh if name not in calibrated]
                if calibrated:
                    notes.append(f"{len(calibrated)} learnable thresholds at their inputs' mean "
                                 "on one training batch")
            if fresh:
                notes.append(f"{len(fresh)} variables of binary activations at their initial "
                             "values")
            print("Stage 2 starts from the stage-1 weights"
                  + (f" ({'; '.join(notes)})" if notes else "") + ".", flush=True)
        print(f"Stage {stage}: {'binary' if binary else 'real'} activations, binary weights, "
              f"{epochs} epochs", flush=True)

        offset = sum(e for s, e, _ in stages if s < stage)
        checkpointing = CheckpointCallback(run, checkpoints,
                                           extra_state=lambda s=stage: {"stage": s},
                                           every_steps=cfg.checkpoint_every_steps)
        callbacks = [
            ProgressBar(),  # losses and accuracies within 120 columns
            NonFiniteGuard(),
            _History(run.join("history.json"), stage, offset),
            # Before the checkpoint, which saves the best value of the epoch it ends.
            *([_BestExport(best_path, best)] if stage == last_stage else []),
            checkpointing,
            # No graph: writing it at the first step made Keras warn that the batch-end
            # callbacks were slow (as in the search).
            tf.keras.callbacks.TensorBoard(run.join("tensorboard", f"stage{stage}"),
                                           profile_batch=0, write_graph=False),
        ]
        if cfg.drop_path > 0:
            callbacks.append(DropPathSchedule(cfg.drop_path, epochs))
        if initial_epoch < epochs:
            fit_resumable(model, make_dataset, epochs=epochs, initial_epoch=initial_epoch,
                          initial_step=initial_step, steps_per_epoch=steps, callbacks=callbacks,
                          checkpoint_callback=checkpointing, validation_data=val_ds,
                          verbose=cfg.verbose)
        run.write_state({**(run.read_state() or {}), "stage": stage, "stage_finished": True})
        previous_weights = {v.name: v.numpy() for v in model.weights}

    # Of the weights just read (reading them again would be a collective op under multi-worker);
    # equal on every worker of a multi-worker run.
    digest = weights_digest(previous_weights.items())
    final = inference_model(model)
    save_model_atomic(final, run.join("model_final.keras"))
    if not os.path.exists(best_path):
        save_model_atomic(final, best_path)
    if run.is_worker_copy:
        # A multi-worker run's other workers stop here: no collective op is left, and the
        # test evaluation, cost table and summary are the chief's.
        return {"weights_digest": digest}
    # Evaluated as saved, like the best model: plain variables, outside the strategy (a
    # model compiled out of its scope may not use the strategy's variables).
    def evaluate(model: tf.keras.Model) -> list[float]:
        model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        return model.evaluate(inputs.test, verbose=0)

    final = tf.keras.models.load_model(run.join("model_final.keras"))
    print("Evaluating on the test set ...", flush=True)
    test_loss, test_acc = evaluate(final)
    best_model = tf.keras.models.load_model(best_path)
    if _same_weights(best_model, final):
        # The last epoch was the best (the usual case under a cosine schedule): one evaluation.
        best_test_acc = test_acc
    else:
        _, best_test_acc = evaluate(best_model)
    cost = model_cost(final)
    cost.save(run.join("cost.json"))
    summary = {
        "test_accuracy": float(test_acc),
        "test_loss": float(test_loss),
        "best_model_test_accuracy": float(best_test_acc),
        "best_val_accuracy": float(best.numpy()),
        "train_images": inputs.train_examples,
        "epochs": {"stage1": cfg.stage1_epochs, "stage2": cfg.epochs},
        "wall_time_s": round(time.time() - t0, 1),
        "cost": cost.totals(),
        "weights_digest": digest,
    }
    atomic_write_json(run.join("summary.json"), summary)
    run.write_state({**(run.read_state() or {}), "finished": True})
    print(cost.table())
    return summary

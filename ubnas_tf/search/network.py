"""The supernet: a `keras.Model` whose `train_step` does the bilevel architecture search."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ubnas_tf.genotype import Genotype, derive_genotype, num_edges
from ubnas_tf.modules import FixedReduction, ModuleConfig, get_module_config, real_stem_layers
from ubnas_tf.ops import resolve_primitives
from ubnas_tf.search.budget import CostTable, budget_loss
from ubnas_tf.search.cell import SearchCell
from ubnas_tf.search.decisiveness import discretization_loss, mean_figures

__all__ = ["ArchitectureObjective", "SearchNetwork", "arch_learning_rate", "default_arch_optimizer",
           "describe_genotype",
           "default_weight_optimizer"]


def arch_learning_rate(arch_steps: int, travel: float = 6.0) -> float:
    r"""The architecture learning rate that lets alpha travel `travel` logits in `arch_steps`.

    Adam's step on a parameter is at most about its learning rate, so N architecture steps
    move a logit by at most \(N \cdot lr\). Going from uniform to a decided edge needs a
    gap of a few logits (\(p_{max} = 0.6\) among 8 ops needs \(\ln(0.6 \cdot 7 / 0.4)
    \approx 2.4\)); a fixed 6e-4 only allows that after thousands of steps, which is why a
    short search stays near uniform. DARTS' own budget allows \(3\mathrm{e}{-4} \times 50
    \times 391 \approx 5.9\) logits, hence the default travel of 6 spread over the steps
    this search actually takes.
    """
    if arch_steps < 1:
        raise ValueError(f"arch_steps must be >= 1, got {arch_steps}.")
    if travel <= 0:
        raise ValueError(f"travel must be > 0, got {travel}.")
    return float(travel) / int(arch_steps)


@dataclasses.dataclass
class ArchitectureObjective:
    r"""What the architecture step minimises besides the held-out loss.

    \[ L_{arch} = L_{CE}^{held-out} + \lambda_d\, r(t) \sum_{cells} L_{disc}
        + \lambda_c (E / T - 1)^2 \]

    Attributes:
        discretization_weight: \(\lambda_d\) of EBNAS' discretisation loss
            (`ubnas_tf.search.decisiveness.discretization_loss`); 0 disables it.
        ramp_steps: \(r(t) = \min(1, t / \text{ramp\_steps})\) with t the architecture
            step (the arch optimiser's checkpointed iteration count), so the term is ramped
            in linearly over the search as in EBNAS: early steps follow the data, late steps
            commit. 0 applies the full weight from the first step.
        cost_table: per-op costs of the evaluation network (`ubnas_tf.search.budget`).
        target: \(T\), the budget in the cost table's unit (MOPs or ms); None adds no
            cost term.
        cost_weight: \(\lambda_c\). The budget term's gradient on one logit is about
            \(2\lambda_c (E/T - 1)\, \partial(E/T)/\partial\alpha\), and one edge's op
            moves \(E/T\) by only about 1 %; 50 makes a 15 % overshoot pull about as hard as
            the discretisation loss (at 5, a 3 MOPs budget ended 31 % over).
    """

    discretization_weight: float = 0.0
    ramp_steps: int = 0
    cost_table: CostTable | None = None
    target: float | None = None
    cost_weight: float = 50.0

    def __post_init__(self):
        if self.discretization_weight < 0 or self.cost_weight < 0:
            raise ValueError("discretization_weight and cost_weight must be >= 0.")
        if self.target is not None and (self.cost_table is None or self.target <= 0):
            raise ValueError("target needs a cost_table and must be > 0.")


def default_arch_optimizer(learning_rate: float = 6e-4) -> tf.keras.optimizers.Optimizer:
    """docs/design.md: Adam, lr 6e-4, betas (0.5, 0.999), weight decay 1e-3 on alpha/beta."""
    return tf.keras.optimizers.Adam(learning_rate, beta_1=0.5, beta_2=0.999, weight_decay=1e-3,
                                    name="arch_adam")


def default_weight_optimizer(learning_rate: float | tf.keras.optimizers.schedules.LearningRateSchedule = 1e-3,
                             clipnorm: float = 5.0) -> tf.keras.optimizers.Optimizer:
    """Adam on the network weights with global-norm gradient clipping at 5.

    Adam rather than DARTS' SGD: latent binary weights need adaptive steps, and weight decay
    on them only pulls signs towards flipping, so none is applied.
    """
    return tf.keras.optimizers.Adam(learning_rate, global_clipnorm=clipnorm, name="weight_adam")


class SearchNetwork(tf.keras.Model):
    r"""The UBNAS supernet.

    Real stem (3x3 conv + BN, or one stride-2 conv + BN per halving with `stem_strides`,
    `ubnas_tf.modules.real_stem_layers`) -> `layers` `SearchCell`\ s (reductions at 1/3 and 2/3 of
    the depth, doubling the width) -> global average pooling -> real dense classifier.

    Architecture parameters \\(\alpha\\) (per edge and op) and \\(\beta\\) (per edge), one
    set for normal and one for reduction cells, are variables of this model but are kept
    out of the weight optimiser: `arch_variables` / `weight_variables` split them.

    `train_step` consumes ``((x_train, y_train), (x_heldout, y_heldout))`` and, once
    `arch_updates_enabled` is set (after warm-up), first takes one `arch_optimizer` step on
    alpha/beta from the held-out batch, then one `optimizer` step on the weights from the
    training batch (first-order DARTS). The architecture step minimises the held-out loss
    plus the terms of the compiled `ArchitectureObjective` (discretisation, budget). A step
    logs its losses and accuracies only: ``loss`` / ``accuracy`` of the training batch and
    ``arch_loss`` / ``arch_accuracy`` of the held-out one (loss without the added terms).
    How decided the architecture is (`decisiveness`) and what it costs (`expected_cost`)
    depend on alpha/beta alone; `ubnas_tf.search.callbacks.ArchitectureFigures` adds them
    to each epoch's logs.

    A module config with a fixed reduction (`ModuleConfig.reduction` ``"real"`` or
    ``"binary"``) puts a `FixedReduction` block where the reduction cells were, as the
    evaluation network will. Then only the normal cell is searched: alpha_reduce and
    beta_reduce still exist (checkpoints and ``arch_history.json`` keep one layout) but are
    not trainable, not in `arch_variables`, not in the discretisation loss, the budget or
    the decisiveness figures, and the derived genotype's reduce cell is a copy of its normal
    cell (a placeholder the evaluation network with the same module config never builds;
    see `genotype`).
    """

    def __init__(
        self,
        num_classes: int,
        init_channels: int = 16,
        layers: int = 8,
        steps: int = 4,
        stem_multiplier: int = 3,
        stem_strides: int = 1,
        primitives: Sequence[str] | None = None,
        k_normal: int = 8,
        k_reduce: int = 4,
        config: str | dict | ModuleConfig | None = None,
        search_weights: str = "binary",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if search_weights not in ("binary", "real"):
            raise ValueError(f"search_weights must be 'binary' or 'real', got {search_weights!r}.")
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells), got {layers}.")
        self.num_classes = int(num_classes)
        self.init_channels = int(init_channels)
        self.num_layers = int(layers)
        self.steps = int(steps)
        self.stem_multiplier = int(stem_multiplier)
        self.stem_strides = int(stem_strides)
        self.primitives = resolve_primitives(primitives)
        self.k_normal = int(k_normal)
        self.k_reduce = int(k_reduce)
        self.module_config = get_module_config(config)
        self.search_weights = search_weights
        if search_weights == "real":
            self.module_config = dataclasses.replace(self.module_config, kernel_quantizer=None)
        self.arch_updates_enabled = False
        self.arch_optimizer: tf.keras.optimizers.Optimizer | None = None
        self.arch_objective = ArchitectureObjective()

        n_e, n_ops = num_edges(steps), len(self.primitives)
        init = tf.keras.initializers.RandomNormal(stddev=1e-3, seed=seed)
        searched = self.searched_reduction
        self.alpha_normal = self.add_weight("alpha_normal", (n_e, n_ops), initializer=init)
        self.alpha_reduce = self.add_weight("alpha_reduce", (n_e, n_ops), initializer=init,
                                            trainable=searched)
        self.beta_normal = self.add_weight("beta_normal", (n_e,), initializer=init)
        self.beta_reduce = self.add_weight("beta_reduce", (n_e,), initializer=init,
                                           trainable=searched)

        c = init_channels
        stem = real_stem_layers(stem_multiplier * c, self.stem_strides, "stem_", epsilon=1e-5)
        self.stem_conv, self.stem_bn = stem[:2]
        self.stem_more = stem[2:]  # the further halvings of a strided stem
        self.cells = []
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c *= 2
            k = self.k_reduce if reduction else self.k_normal
            if reduction and not searched:
                # Non-affine BN, as everywhere in the supernet.
                self.cells.append(FixedReduction(steps * c, affine=False,
                                                 config=self.module_config, name=f"cell_{i}"))
            else:
                self.cells.append(
                    SearchCell(c, reduction, reduction_prev, self.primitives, k, steps,
                               self.module_config, name=f"cell_{i}")
                )
            reduction_prev = reduction
        self.global_pool = tf.keras.layers.GlobalAveragePooling2D(name="global_pool")
        self.classifier = tf.keras.layers.Dense(num_classes, dtype="float32", name="classifier")
        self.arch_loss_tracker = tf.keras.metrics.Mean(name="arch_loss")
        self.arch_accuracy_tracker = tf.keras.metrics.SparseCategoricalAccuracy(name="arch_accuracy")

    # -- variables ---------------------------------------------------------------------------

    @property
    def searched_reduction(self) -> bool:
        """False when the module config puts a fixed block in place of the reduction cells."""
        return self.module_config.searched_reduction

    @property
    def arch_variables(self) -> list[tf.Variable]:
        """alpha/beta that the architecture step updates (the reduce ones only if searched)."""
        if not self.searched_reduction:
            return [self.alpha_normal, self.beta_normal]
        return [self.alpha_normal, self.beta_normal, self.alpha_reduce, self.beta_reduce]

    @property
    def weight_variables(self) -> list[tf.Variable]:
        arch = {v.ref() for v in (self.alpha_normal, self.beta_normal, self.alpha_reduce,
                                  self.beta_reduce)}
        return [v for v in self.trainable_variables if v.ref() not in arch]

    # -- forward -----------------------------------------------------------------------------

    def call(self, inputs, training=None):
        return self.forward(inputs, training=training)

    def forward(self, inputs, training=None, architecture=None):
        """The supernet's logits; with ``architecture`` (``{"normal": (op_weights [14, n_ops],
        edge_weights [14]), "reduce": ...}``, e.g. `ubnas_tf.search.one_shot.
        genotype_architecture`) in place of softmax(alpha) and softmax(beta)."""
        if architecture is None:
            cells = {False: (tf.nn.softmax(self.alpha_normal, axis=-1), None),
                     True: (tf.nn.softmax(self.alpha_reduce, axis=-1), None)}
        else:
            cells = {False: architecture["normal"], True: architecture["reduce"]}
        x = self.stem_bn(self.stem_conv(inputs), training=training)
        for layer in self.stem_more:
            x = layer(x, training=training)
        s0 = s1 = x
        for cell in self.cells:
            if isinstance(cell, FixedReduction):
                s0, s1 = s1, cell(s1, training=training)
                continue
            alpha, edge_weights = cells[cell.reduction]
            beta = self.beta_reduce if cell.reduction else self.beta_normal
            s0, s1 = s1, cell([s0, s1], tf.cast(alpha, self.alpha_normal.dtype), beta,
                              training=training, edge_weights=edge_weights)
        return self.classifier(self.global_pool(s1))

    # -- training ----------------------------------------------------------------------------

    def compile(self, optimizer="default", arch_optimizer="default", loss=None, metrics=None,
                arch_objective: ArchitectureObjective | None = None, **kwargs):
        """As `keras.Model.compile`, plus the architecture optimiser (default: the Adam of
        docs/design.md) and the `ArchitectureObjective` (default: the held-out loss alone).

        The default loss is sparse categorical cross-entropy on logits, the default metric
        accuracy. Both optimisers are built on their own variables here, so the traced step
        creates no variables.

        Raises:
            ValueError: the objective's cost table was measured on a network whose reduction
                is searched while this one's is fixed, or the reverse: the budget would
                charge (or leave out) reduce-cell ops the other network does not have.
        """
        table = arch_objective.cost_table if arch_objective is not None else None
        if table is not None and table.searched_reduction != self.searched_reduction:
            what = {True: "searched", False: "a fixed block"}
            raise ValueError(
                f"The budget's network has a reduction that is {what[table.searched_reduction]}"
                f", the supernet's module config ({self.module_config.name!r}, reduction="
                f"{self.module_config.reduction!r}) one that is {what[self.searched_reduction]}"
                "; give the search and the retraining (--target_train_flagfile) module configs "
                "that agree on whether the reduction cell is searched.")
        self.arch_objective = arch_objective or ArchitectureObjective()
        if isinstance(optimizer, str) and optimizer == "default":
            optimizer = default_weight_optimizer()
        if isinstance(arch_optimizer, str) and arch_optimizer == "default":
            arch_optimizer = default_arch_optimizer()
        if loss is None:
            loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics is None:
            metrics = [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        if tf.keras.mixed_precision.global_policy().compute_dtype == "float16" and not isinstance(
            arch_optimizer, tf.keras.mixed_precision.LossScaleOptimizer
        ):
            arch_optimizer = tf.keras.mixed_precision.LossScaleOptimizer(arch_optimizer)
        self.arch_optimizer = arch_optimizer
        if self.built:
            self.build_optimizers()

    def build_optimizers(self) -> None:
        """Creates both optimisers' slots on their own variable sets (call once built)."""
        with self.distribute_strategy.scope():
            self.optimizer.build(self.weight_variables)
            self.arch_optimizer.build(self.arch_variables)

    def build_network(self, input_shape: Sequence[int]) -> None:
        """Builds all layers for images of `input_shape` (H, W, C), then the optimisers."""
        self(tf.zeros((1, *input_shape)), training=False)
        if self.optimizer is not None and self.arch_optimizer is not None:
            self.build_optimizers()

    def set_arch_updates(self, enabled: bool) -> None:
        """Turns the architecture step on or off; retraces the train function if it changed.

        A Python flag (not a `tf.cond`) keeps the warm-up step free of the held-out pass and
        avoids cross-replica merges inside control flow under `tf.distribute`.
        """
        enabled = bool(enabled)
        if enabled != self.arch_updates_enabled:
            self.arch_updates_enabled = enabled
            if self.train_function is not None:
                self.train_function = self.make_train_function(force=True)

    def expected_cost(self) -> tf.Tensor | None:
        """Expected cost (in the cost table's unit) of the derived evaluation network, if a
        cost table is set."""
        table = self.arch_objective.cost_table
        if table is None:
            return None
        return table.expected(self.alpha_normal, self.beta_normal, self.alpha_reduce,
                                   self.beta_reduce)

    def arch_regularization(self) -> tf.Tensor:
        """The terms `ArchitectureObjective` adds to the held-out loss (differentiable)."""
        objective = self.arch_objective
        total = tf.zeros(())
        if objective.discretization_weight > 0:
            ramp = 1.0
            if objective.ramp_steps > 0:
                step = tf.cast(self.arch_optimizer.iterations + 1, tf.float32)
                ramp = tf.minimum(1.0, step / float(objective.ramp_steps))
            disc = sum(discretization_loss(alpha, beta, self.steps, primitives=self.primitives)
                       for alpha, beta in self._searched_cells())
            total += objective.discretization_weight * ramp * disc
        if objective.target is not None:
            total += budget_loss(self.expected_cost(), objective.target,
                                 objective.cost_weight)
        return total

    def _searched_cells(self) -> list[tuple[tf.Variable, tf.Variable]]:
        cells = [(self.alpha_normal, self.beta_normal)]
        if self.searched_reduction:
            cells.append((self.alpha_reduce, self.beta_reduce))
        return cells

    def decisiveness(self) -> dict[str, tf.Tensor]:
        """Mean decisiveness figures of the searched cell types (`ubnas_tf.search.decisiveness`)."""
        return mean_figures(self.alpha_normal, self.beta_normal, self.alpha_reduce,
                            self.beta_reduce, self.primitives, self.steps,
                            searched_reduction=self.searched_reduction)

    def training_forward(self, x: tf.Tensor) -> tf.Tensor:
        """``self(x, training=True)`` as one nested `tf.function`, shared by both steps.

        The architecture and the weight step run the same forward pass on different batches.
        Inlined, each would put the whole supernet, and its gradient, into the train function
        twice; called as one traced function, the forward graph and its backward function are
        built once, which roughly halves the Python tracing before the first step. The
        runtime inlines both calls again, and the step measured no slower
        (`benchmarks/search_throughput.py`). Eager execution (``run_eagerly``) calls the
        model directly.
        """
        if tf.executing_eagerly() or not self.built:
            return self(x, training=True)
        forward = self.__dict__.get("_training_forward_fn")
        if forward is None:
            # Not a tracked attribute: it holds no state and must not enter checkpoints.
            forward = tf.function(lambda images: self(images, training=True),
                                  reduce_retracing=True, autograph=False)
            object.__setattr__(self, "_training_forward_fn", forward)
        return forward(x)

    def train_step(self, data):
        (x_train, y_train), (x_val, y_val) = data
        logs = {}
        if self.arch_updates_enabled:
            with tf.GradientTape() as tape:
                val_pred = self.training_forward(x_val)
                val_loss = self.compute_loss(x_val, y_val, val_pred)
                arch_loss = val_loss + self.arch_regularization()
            self.arch_optimizer.minimize(arch_loss, self.arch_variables, tape=tape)
            # The held-out loss alone, comparable with the training loss.
            self.arch_loss_tracker.update_state(val_loss)
            self.arch_accuracy_tracker.update_state(y_val, val_pred)
        with tf.GradientTape() as tape:
            y_pred = self.training_forward(x_train)
            loss = self.compute_loss(x_train, y_train, y_pred)
        self.optimizer.minimize(loss, self.weight_variables, tape=tape)
        logs.update(self.compute_metrics(x_train, y_train, y_pred, None))
        if self.arch_updates_enabled:
            logs["arch_loss"] = self.arch_loss_tracker.result()
            logs["arch_accuracy"] = self.arch_accuracy_tracker.result()
        else:
            # `compute_metrics` reports every tracker in `self.metrics`; during warm-up the
            # held-out trackers are empty and would log a misleading 0.0.
            logs.pop(self.arch_loss_tracker.name, None)
            logs.pop(self.arch_accuracy_tracker.name, None)
        return logs

    @property
    def metrics(self):
        return [*super().metrics, self.arch_loss_tracker, self.arch_accuracy_tracker]

    # -- architecture ------------------------------------------------------------------------

    def arch_values(self) -> dict[str, np.ndarray]:
        """Raw alpha/beta logits as numpy arrays."""
        return {
            "alpha_normal": self.alpha_normal.numpy(),
            "alpha_reduce": self.alpha_reduce.numpy(),
            "beta_normal": self.beta_normal.numpy(),
            "beta_reduce": self.beta_reduce.numpy(),
        }

    def genotype(self) -> Genotype:
        """The genotype derived from the current alpha/beta (docs/design.md, "Derivation").

        With a fixed reduction only the normal cell is derived; the reduce cell is a copy of
        it. A genotype has to name a reduce cell, and the copy is the most harmless one: the
        evaluation network with the same module config never builds it, and one with a
        searched reduction would run the searched normal cell at stride 2 (rather than
        whatever the untrained alpha_reduce would give).
        """
        v = self.arch_values()
        if not self.searched_reduction:
            return derive_genotype(v["alpha_normal"], v["beta_normal"], v["alpha_normal"],
                                   v["beta_normal"], self.primitives, self.steps)
        return derive_genotype(v["alpha_normal"], v["beta_normal"], v["alpha_reduce"],
                               v["beta_reduce"], self.primitives, self.steps)

    def describe_genotype(self, genotype: Genotype) -> str:
        """`genotype` as text (see `describe_genotype`)."""
        return describe_genotype(genotype, self.module_config)

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "init_channels": self.init_channels,
            "layers": self.num_layers,
            "steps": self.steps,
            "stem_multiplier": self.stem_multiplier,
            "stem_strides": self.stem_strides,
            "primitives": list(self.primitives),
            "k_normal": self.k_normal,
            "k_reduce": self.k_reduce,
            "config": get_module_config(self.module_config).to_dict(),
            "search_weights": self.search_weights,
        }


def describe_genotype(genotype: Genotype, module_config: str | dict | ModuleConfig | None) -> str:
    """`genotype` as text; with a fixed reduction (`ModuleConfig.reduction`), the normal cell
    and what replaces the reduce cell, rather than the genotype's placeholder copy."""
    config = get_module_config(module_config)
    if config.searched_reduction:
        return str(genotype)
    normal = str(genotype).splitlines()[0]
    return (f"{normal}\nreduce: not searched; fixed {config.reduction!r} reduction block "
            f"(module config {config.name!r})")

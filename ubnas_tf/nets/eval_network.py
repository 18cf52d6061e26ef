"""The evaluation network: a genotype's cells stacked into a functional Keras model."""

from __future__ import annotations

import dataclasses
import warnings

import larq as lq
import tensorflow as tf

from ubnas_tf.cost import iter_layers
from ubnas_tf.genotype import Genotype, edge_index
from ubnas_tf.modules import (
    FixedReduction,
    ModuleConfig,
    get_module_config,
    preprocess_layer,
    real_stem_layers,
)
from ubnas_tf.nets.layers import DropPath
from ubnas_tf.ops import build_op

__all__ = ["EvalNetworkConfig", "OpPlace", "build_eval_network", "check_lce_alignment",
           "op_places", "LCE_CHANNEL_MULTIPLE"]

LCE_CHANNEL_MULTIPLE = 32  # LCE packs binary activations in 32-bit words


@dataclasses.dataclass(frozen=True)
class EvalNetworkConfig:
    """Shape of the evaluation network.

    Attributes:
        layers: number of cells (reduction cells at 1/3 and 2/3 of the depth).
        init_channels: width C of the first cells; a node's ops work at width C (2C, 4C
            after each reduction); a cell outputs ``len(concat) * C`` channels.
        stem_multiplier: the real stem outputs ``stem_multiplier * C`` channels.
        stem_strides: total stride of the real stem (1, 2, 4 or 8; one stride-2 conv per
            halving). 2 quarters the cost of every cell.
        auxiliary: add DARTS' auxiliary classifier after the second reduction (training only).
        drop_path: maximum drop-path rate (ramped by `DropPathSchedule`); 0 disables it.
        binary_activations: False for stage 1 of two-stage training (real activations,
            binary weights); True for the fully binary network.
    """

    layers: int = 8
    init_channels: int = 32
    stem_multiplier: int = 3
    stem_strides: int = 1
    auxiliary: bool = False
    drop_path: float = 0.0
    binary_activations: bool = True


@dataclasses.dataclass(frozen=True)
class OpPlace:
    """Where the evaluation network runs a searchable op: cell `cell` (a reduction cell if
    `reduction`), edge `edge` (`ubnas_tf.genotype.edge_index`), on an input of
    `height` x `width` x `channels` with `strides` (2 on a reduction cell's input edges)."""

    cell: int
    reduction: bool
    edge: int
    channels: int
    height: int
    width: int
    strides: int

    @property
    def shape(self) -> tuple[str, int, int, int, int]:
        """What an op's cost depends on besides its name: the cell type and the input."""
        return ("reduce" if self.reduction else "normal", self.channels, self.height,
                self.width, self.strides)


def op_places(input_shape: tuple[int, int, int], config: EvalNetworkConfig,
              module_config: str | dict | ModuleConfig | None = None,
              steps: int = 4) -> list[OpPlace]:
    """Every place of a searchable op in the evaluation network of `config`, cell by cell
    (a fixed reduction block has none), as `build_eval_network` builds it."""
    cfg = get_module_config(module_config)
    height, width = input_shape[0], input_shape[1]
    for _ in range(max(1, config.stem_strides.bit_length() - 1) if config.stem_strides > 1 else 0):
        height, width = -(-height // 2), -(-width // 2)
    channels = config.init_channels
    places = []
    for i in range(config.layers):
        reduction = i in (config.layers // 3, 2 * config.layers // 3)
        if reduction:
            channels *= 2
        out_h, out_w = (-(-height // 2), -(-width // 2)) if reduction else (height, width)
        if not (reduction and not cfg.searched_reduction):
            for node in range(steps):
                for source in range(node + 2):
                    strides = 2 if reduction and source < 2 else 1
                    h, w = (height, width) if strides == 2 else (out_h, out_w)
                    places.append(OpPlace(i, reduction, edge_index(node, source), channels,
                                          h, w, strides))
        height, width = out_h, out_w
    return places


def _cell(inputs, genotype: Genotype, reduction: bool, reduction_prev: bool, channels: int,
          cfg: ModuleConfig, drop_path: float, name: str):
    s0, s1 = inputs
    if reduction and not cfg.searched_reduction:
        # A fixed reduction block replaces the genotype's reduce cell; it outputs the width
        # a cell of this width would (the normal cell's concat, since the reduce cell's is
        # not used).
        width = len(genotype.normal_concat) * channels
        return FixedReduction(width, affine=True, config=cfg, name=f"{name}/fixed_reduction")(s1)
    edges, concat = genotype.cell(reduction)
    states = [
        preprocess_layer(channels, reduction_prev, True, cfg, f"{name}/preprocess0")(s0),
        preprocess_layer(channels, False, True, cfg, f"{name}/preprocess1")(s1),
    ]
    for node in range(len(edges) // 2):
        outs = []
        for k in (2 * node, 2 * node + 1):
            op_name, source = edges[k]
            strides = 2 if reduction and source < 2 else 1
            h = build_op(op_name, channels, strides, cfg, search=False,
                         layer_name=f"{name}/n{node + 2}_{k % 2}_{op_name}")(states[source])
            if drop_path > 0 and not (op_name == "skip_connect" and strides == 1):
                h = DropPath(drop_path, name=f"{name}/n{node + 2}_{k % 2}_drop")(h)
            outs.append(h)
        states.append(tf.keras.layers.Add(name=f"{name}/n{node + 2}")(outs))
    if len(concat) == 1:
        # A one-input Concatenate builds, but its saved model (.keras or SavedModel) won't load.
        return tf.keras.layers.Identity(name=f"{name}/out")(states[concat[0]])
    return tf.keras.layers.Concatenate(name=f"{name}/out")([states[i] for i in concat])


def _auxiliary_head(x, num_classes: int):
    h = tf.keras.layers.ReLU(name="aux/relu0")(x)
    h = tf.keras.layers.AveragePooling2D(5, strides=max(1, h.shape[1] // 3) if h.shape[1] > 5 else 1,
                                         padding="same", name="aux/pool")(h)
    h = tf.keras.layers.Conv2D(128, 1, use_bias=False, name="aux/conv1")(h)
    h = tf.keras.layers.BatchNormalization(name="aux/bn1")(h)
    h = tf.keras.layers.ReLU(name="aux/relu1")(h)
    h = tf.keras.layers.GlobalAveragePooling2D(name="aux/gap")(h)
    return tf.keras.layers.Dense(num_classes, dtype="float32", name="aux_logits")(h)


def build_eval_network(genotype: Genotype, input_shape: tuple[int, int, int], num_classes: int,
                       config: EvalNetworkConfig = EvalNetworkConfig(),
                       module_config: str | dict | ModuleConfig | None = None,
                       allow_unaligned: bool = False, name: str = "ubnas_net") -> tf.keras.Model:
    """Builds the evaluation network of `genotype` as a functional Keras model.

    Real-valued: the stem conv, the classifier, the auxiliary head, and real preprocessing
    convs (and a ``"real"`` fixed reduction) if the module config asks for them; everything
    else is binary. With a fixed ``module_config.reduction`` the reduction cells are
    `ubnas_tf.modules.FixedReduction` blocks of ``len(genotype.normal_concat) * C`` output
    channels and the genotype's reduce cell is not used. Outputs logits
    (and, with ``config.auxiliary``, a second output ``aux_logits``).

    Raises:
        ValueError: a binary conv would get a channel count that is not a multiple of 32
            (LCE's bit packing) unless `allow_unaligned` (then it only warns).
    """
    genotype.validate()
    cfg = get_module_config(module_config)
    if not config.binary_activations:
        cfg = dataclasses.replace(cfg, activation_quantizer=None)
    c = config.init_channels
    inputs = tf.keras.Input(input_shape, name="image")
    x = inputs
    for layer in real_stem_layers(config.stem_multiplier * c, config.stem_strides, "stem/"):
        x = layer(x)
    s0 = s1 = x
    reduction_prev = False
    aux = None
    for i in range(config.layers):
        reduction = i in (config.layers // 3, 2 * config.layers // 3)
        if reduction:
            c *= 2
        s0, s1 = s1, _cell([s0, s1], genotype, reduction, reduction_prev, c, cfg,
                           config.drop_path, f"cell_{i}")
        reduction_prev = reduction
        if config.auxiliary and i == 2 * config.layers // 3:
            aux = _auxiliary_head(s1, num_classes)
    h = tf.keras.layers.GlobalAveragePooling2D(name="global_pool")(s1)
    # Real shortcuts add up over the cells; normalising the pooled features keeps the
    # initial logits O(1) (otherwise the first epochs only undo a huge initial loss).
    h = tf.keras.layers.BatchNormalization(momentum=0.9, name="head/bn")(h)
    logits = tf.keras.layers.Dense(num_classes, dtype="float32", name="logits")(h)
    model = tf.keras.Model(inputs, [logits, aux] if aux is not None else logits, name=name)
    problems = check_lce_alignment(model)
    if problems:
        message = ("Binary convs whose input channels are not a multiple of "
                   f"{LCE_CHANNEL_MULTIPLE} (LCE packs bits in 32s; they run slower or not "
                   "at all): " + "; ".join(problems) + ". Choose --init_channels (and the stem "
                   "multiplier) so that every cell width is a multiple of 32.")
        if not allow_unaligned:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return model


def check_lce_alignment(model: tf.keras.Model) -> list[str]:
    """Paths and input widths of binary convs whose input channels are not multiples of 32.

    Convs with a binary kernel count even without an input quantizer (stage 1), so a bad
    width is reported before stage 1 trains, not when stage 2 is built.
    """
    problems = []
    # Paths ("cell_0/preprocess0/bconv"), not names: every module's conv is named "bconv".
    for path, layer in iter_layers(model):
        if isinstance(layer, lq.layers.QuantConv2D) and (
            layer.input_quantizer is not None or layer.kernel_quantizer is not None
        ):
            channels = layer.input_spec.axes[-1] if layer.input_spec and layer.input_spec.axes else None
            if channels is None:
                channels = int(layer.kernel.shape[-2])
            if channels % LCE_CHANNEL_MULTIPLE:
                problems.append(f"{path} ({channels} channels)")
    return problems


def inference_model(model: tf.keras.Model) -> tf.keras.Model:
    """The model without its auxiliary output (what is exported and converted)."""
    if len(model.outputs) == 1:
        return model
    return tf.keras.Model(model.inputs, model.outputs[0], name=model.name)

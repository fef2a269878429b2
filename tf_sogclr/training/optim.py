"""Optimisation: LARS, AdamW, warm-up + cosine schedule, learning-rate scaling, weight decay.

Follows SimCLR TF2 (`lars_optimizer.py` and the optimiser parts of `model.py`), with explicit
arguments instead of flags. Every optimiser built here also takes per-variable learning-rate
multipliers (`training.learning_rate_multipliers`).
"""

import math
import numbers
import re

import keras
import tensorflow as tf
from keras import ops

from tf_sogclr.config import LEARNING_RATE_SCALINGS, OPTIMIZERS
from tf_sogclr.training.learning_rate_multipliers import (PerVariableLearningRate,
                                                          check_multipliers, variable_path)


# Regexes searched in variable paths. SimCLR spells the first one "batch_normalization" (the
# Keras default layer name); "batch_norm" also matches names like "batch_norm_1".
BATCH_NORM_PATTERN = "batch_norm"
SUPERVISED_HEAD_PATTERN = "head_supervised"
# What SimCLR's LARS leaves out of weight decay and of layer adaptation; under LARS the
# supervised head is decayed through the loss instead (`weight_decay_loss`), as in SimCLR.
DEFAULT_EXCLUDES = (BATCH_NORM_PATTERN, "bias", SUPERVISED_HEAD_PATTERN)
# What AdamW leaves out of its decoupled decay: the supervised head decays with the other
# weights. Through the loss its L2 gradient would pass Adam's normalisation, and at AdamW's
# coefficients (0.1, against LARS's 1e-6) hold the head far nearer zero than the decoupled
# decay holds any other weight.
ADAMW_EXCLUDES = (BATCH_NORM_PATTERN, "bias")


def _matches_any(path, patterns):
    return any(re.search(p, path) is not None for p in patterns)


def _check_patterns(patterns, arg_name):
    if patterns is None:
        return []
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"`{arg_name}` must be a list of regex strings (e.g. ['batch_norm', 'bias']), "
            f"not a single string or non-strings; got {patterns!r}."
        )
    return list(patterns)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_non_negative(value, arg_name):
    if not _is_number(value) or not value >= 0:
        raise ValueError(f"`{arg_name}` must be a float >= 0; got {value!r}.")


def _check_hyperparameters(learning_rate, momentum, weight_decay):
    if _is_number(learning_rate) and learning_rate >= 0:
        pass
    elif _is_number(learning_rate) or not callable(learning_rate):
        raise ValueError(
            "`learning_rate` must be a float >= 0 or a LearningRateSchedule; "
            f"got {learning_rate!r}."
        )
    if not _is_number(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"`momentum` must be a float in [0, 1); got {momentum!r}.")
    _check_non_negative(weight_decay, "weight_decay")


def _as_float_if_number(learning_rate):
    return float(learning_rate) if isinstance(learning_rate, numbers.Real) else learning_rate


@keras.saving.register_keras_serializable(package="tf_sogclr")
class LARS(PerVariableLearningRate, keras.optimizers.Optimizer):
    """LARS with classic momentum and coupled weight decay, as SimCLR's LARSOptimizer.

    Exclusions are regexes searched in each variable's `path`; `exclude_from_layer_adaptation`
    None means the `exclude_from_weight_decay` list. Keras's decoupled decay stays off.
    """

    def __init__(
        self,
        learning_rate,
        momentum=0.9,
        weight_decay=0.0,
        trust_coefficient=0.001,
        nesterov=False,
        exclude_from_weight_decay=DEFAULT_EXCLUDES,
        exclude_from_layer_adaptation=None,
        learning_rate_multipliers=None,
        name=None,
        **kwargs,
    ):
        _check_hyperparameters(learning_rate, momentum, weight_decay)
        if not _is_number(trust_coefficient) or not trust_coefficient > 0:
            raise ValueError(
                f"`trust_coefficient` must be a float > 0; got {trust_coefficient!r}."
            )
        wd_excludes = _check_patterns(exclude_from_weight_decay, "exclude_from_weight_decay")
        if exclude_from_layer_adaptation is None:
            adaptation_excludes = list(wd_excludes)
        else:
            adaptation_excludes = _check_patterns(
                exclude_from_layer_adaptation, "exclude_from_layer_adaptation"
            )
        # The base class's decoupled decay (`self.weight_decay`, applied in
        # `_apply_weight_decay`) stays off: LARS's decay lives in `update_step`.
        super().__init__(
            learning_rate=_as_float_if_number(learning_rate),
            weight_decay=None,
            learning_rate_multipliers=learning_rate_multipliers,
            name=name,
            **kwargs,
        )
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.nesterov = bool(nesterov)
        self.weight_decay_excludes = tuple(wd_excludes)
        self.layer_adaptation_excludes = tuple(adaptation_excludes)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Not supported: pass `exclude_from_weight_decay=[...]` to the constructor."""
        raise ValueError(
            "LARS takes its exclusions as constructor arguments "
            "(`exclude_from_weight_decay`, `exclude_from_layer_adaptation`)."
        )

    def build(self, variables):
        """Creates one momentum slot per variable and resolves the exclusion lists."""
        if self.built:
            return
        super().build(variables)
        self.momentums = [
            self.add_variable_from_reference(v, name="momentum") for v in variables
        ]
        # Decided once, from the Keras paths: inside `update_step` (tf backend) the variable
        # is a bare (possibly per-replica) tf.Variable without a path.
        self._decay_flags = tuple(
            self.lars_weight_decay > 0
            and not _matches_any(variable_path(v), self.weight_decay_excludes)
            for v in variables
        )
        self._adaptation_flags = tuple(
            not _matches_any(variable_path(v), self.layer_adaptation_excludes)
            for v in variables
        )

    def update_step(self, gradient, variable, learning_rate):
        """One LARS step for one variable (dense; sparse gradients are densified)."""
        learning_rate = self.variable_learning_rate(variable, learning_rate)
        index = self._get_variable_index(variable)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        dtype = variable.dtype
        gradient = ops.cast(gradient, dtype)
        learning_rate = ops.cast(learning_rate, dtype)
        velocity = self.momentums[index]
        momentum = ops.cast(self.momentum, dtype)

        if self._decay_flags[index]:
            gradient = gradient + ops.cast(self.lars_weight_decay, dtype) * variable
        if self._adaptation_flags[index]:
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            safe_g_norm = ops.where(g_norm > 0, g_norm, ops.ones_like(g_norm))
            trust_ratio = ops.where(
                w_norm > 0,
                ops.where(
                    g_norm > 0,
                    ops.cast(self.trust_coefficient, dtype) * w_norm / safe_g_norm,
                    ops.ones_like(w_norm),
                ),
                ops.ones_like(w_norm),
            )
            scaled_lr = learning_rate * trust_ratio
        else:
            scaled_lr = learning_rate

        next_velocity = momentum * velocity + scaled_lr * gradient
        if self.nesterov:
            update = momentum * next_velocity + scaled_lr * gradient
        else:
            update = next_velocity
        self.assign(velocity, next_velocity)
        self.assign_sub(variable, update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay,
                "trust_coefficient": self.trust_coefficient,
                "nesterov": self.nesterov,
                "exclude_from_weight_decay": list(self.weight_decay_excludes),
                "exclude_from_layer_adaptation": list(self.layer_adaptation_excludes),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class AdamW(PerVariableLearningRate, keras.optimizers.AdamW):
    """Keras's AdamW (decoupled weight decay: each step also subtracts lr * weight_decay *
    variable) with exclusions as regexes searched in each variable's `path` (default
    `ADAMW_EXCLUDES`: batch norm and biases).

    Keras's own `exclude_from_weight_decay(var_names=...)` matches the short variable name
    ("kernel"), which cannot tell the supervised head from the encoder, nor a layer norm's
    "gamma" from a batch norm's; so the exclusions are resolved here when the slots are built.
    """

    def __init__(self, learning_rate, weight_decay=0.0,
                 exclude_from_weight_decay=ADAMW_EXCLUDES, learning_rate_multipliers=None,
                 name="adamw", **kwargs):
        _check_hyperparameters(learning_rate, 0.0, weight_decay)
        super().__init__(learning_rate=_as_float_if_number(learning_rate),
                         weight_decay=float(weight_decay),
                         learning_rate_multipliers=learning_rate_multipliers, name=name,
                         **kwargs)
        self.weight_decay_excludes = tuple(
            _check_patterns(exclude_from_weight_decay, "exclude_from_weight_decay"))

    def build(self, variables):
        if self.built:
            return
        super().exclude_from_weight_decay(var_list=[
            v for v in variables if _matches_any(variable_path(v), self.weight_decay_excludes)])
        super().build(variables)

    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay"] = list(self.weight_decay_excludes)
        return config


@keras.saving.register_keras_serializable(package="tf_sogclr")
class SGD(PerVariableLearningRate, keras.optimizers.SGD):
    """Keras's SGD (with momentum) taking `learning_rate_multipliers`."""


@keras.saving.register_keras_serializable(package="tf_sogclr")
class Adam(PerVariableLearningRate, keras.optimizers.Adam):
    """Keras's Adam taking `learning_rate_multipliers`."""


@keras.saving.register_keras_serializable(package="tf_sogclr")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """SimCLR's WarmUpAndCosineDecay, computed by Keras's CosineDecay (from 0, warmup_target):

    lr(s) = base * s / W for s < W, else base * 0.5 * (1 + cos(pi * (min(s, T) - W) / (T - W))).
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps, name="WarmupCosineDecay"):
        _check_non_negative(base_learning_rate, "base_learning_rate")
        if not _is_int(warmup_steps) or warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an int >= 0; got {warmup_steps!r}.")
        if not _is_int(total_steps) or total_steps <= warmup_steps:
            raise ValueError(
                f"`total_steps` must be an int > warmup_steps ({warmup_steps}); "
                f"got {total_steps!r}."
            )
        super().__init__(
            initial_learning_rate=0.0,
            decay_steps=int(total_steps) - int(warmup_steps),
            alpha=0.0,
            name=name,
            warmup_target=float(base_learning_rate),
            warmup_steps=int(warmup_steps),
        )
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "name": self.name,
        }


def scaled_learning_rate(learning_rate, global_batch_size, scaling):
    """SimCLR's learning-rate scaling: "linear" lr * B / 256, "sqrt" lr * sqrt(B)."""
    if scaling not in LEARNING_RATE_SCALINGS:
        raise ValueError(
            f"`learning_rate_scaling` (argument `scaling`) must be one of "
            f"{LEARNING_RATE_SCALINGS}; got {scaling!r}."
        )
    if not _is_int(global_batch_size) or global_batch_size <= 0:
        raise ValueError(
            f"`global_batch_size` must be an int > 0; got {global_batch_size!r}."
        )
    _check_non_negative(learning_rate, "learning_rate")
    if scaling == "linear":
        return float(learning_rate) * global_batch_size / 256.0
    return float(learning_rate) * math.sqrt(global_batch_size)


def steps_per_epoch(num_examples, global_batch_size):
    """Steps in one epoch with `drop_remainder=True`: num_examples // global_batch_size."""
    if not _is_int(num_examples) or num_examples <= 0:
        raise ValueError(f"`num_examples` must be an int > 0; got {num_examples!r}.")
    if not _is_int(global_batch_size) or not 0 < global_batch_size <= num_examples:
        raise ValueError(
            f"`global_batch_size` must be an int in [1, num_examples={num_examples}]; "
            f"got {global_batch_size!r}."
        )
    return int(num_examples) // int(global_batch_size)


def _check_optimizer_name(name):
    if name not in OPTIMIZERS:
        raise ValueError(
            f"`optimizer` (argument `name`) must be one of {OPTIMIZERS}; got {name!r}."
        )


def weight_decay_excludes(name, extra=()):
    """The regexes optimizer `name` leaves out of its own weight decay, plus `extra`:
    `DEFAULT_EXCLUDES` for "lars", `ADAMW_EXCLUDES` for "adamw"; "momentum" and "adam" decay
    nothing themselves (`weight_decay_loss`), so only `extra`."""
    _check_optimizer_name(name)
    own = {"lars": DEFAULT_EXCLUDES, "adamw": ADAMW_EXCLUDES}.get(name, ())
    return tuple(own) + tuple(extra)


def weight_decay_in_optimizer(name):
    """True if optimizer `name` applies weight decay itself (LARS, AdamW); else it goes in
    the loss."""
    _check_optimizer_name(name)
    return name in ("lars", "adamw")


def optimizer_name(optimizer):
    """The `build_optimizer` name of a built optimiser (a loss-scale wrapper's inner one)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    for name, kind in (("lars", LARS), ("adamw", AdamW), ("adam", keras.optimizers.Adam)):
        if isinstance(optimizer, kind):
            return name
    return "momentum"


def build_optimizer(
    name,
    learning_rate,
    momentum=0.9,
    weight_decay=0.0,
    exclude_from_weight_decay=None,
    nesterov=False,
    trust_coefficient=0.001,
    learning_rate_multipliers=None,
):
    """Builds the optimiser named `name` ("lars", "momentum", "adam" or "adamw"), as SimCLR
    does ("adamw": FastCLIP's).

    "lars" and "adamw" apply `weight_decay` themselves, to every variable whose path matches
    no `exclude_from_weight_decay` regex (None: `weight_decay_excludes(name)`); only "lars"
    uses `trust_coefficient`. For the others add `weight_decay_loss(...)` to the loss.
    "adam" and "adamw" ignore `momentum`.
    `learning_rate_multipliers` {regex: factor}: the variables whose path matches take
    `factor` times the learning rate (module docstring).
    """
    _check_optimizer_name(name)
    _check_hyperparameters(learning_rate, momentum, weight_decay)
    learning_rate = _as_float_if_number(learning_rate)
    multipliers = check_multipliers(learning_rate_multipliers)
    if exclude_from_weight_decay is None:
        exclude_from_weight_decay = weight_decay_excludes(name)
    if name == "lars":
        return LARS(
            learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            nesterov=nesterov,
            exclude_from_weight_decay=exclude_from_weight_decay,
            learning_rate_multipliers=multipliers,
        )
    if name == "momentum":
        return SGD(learning_rate, momentum=float(momentum), nesterov=nesterov,
                   learning_rate_multipliers=multipliers)
    if name == "adamw":
        return AdamW(learning_rate, weight_decay=weight_decay,
                     exclude_from_weight_decay=exclude_from_weight_decay,
                     learning_rate_multipliers=multipliers)
    return Adam(learning_rate, learning_rate_multipliers=multipliers)


def build_scheduled_optimizer(optimizer_cfg, global_batch_size, steps_per_epoch, total_steps,
                              exclude_from_weight_decay=None,
                              peak_learning_rates=None):
    """The optimiser of a run: `optimizer_cfg`'s optimiser on SimCLR's schedule.

    `optimizer_cfg` is a `config.OptimizerConfig`: its learning rate, scaled by
    `learning_rate_scaling` for `global_batch_size`, warms up linearly over
    `warmup_epochs * steps_per_epoch` steps and then follows a cosine to 0 at `total_steps`.
    `peak_learning_rates` {regex: peak}: the variables whose path matches follow the same
    schedule to their own peak (not scaled by batch size). Pretraining, the dual encoder and
    fine-tuning all build their optimiser here.
    """
    warmup = int(round(optimizer_cfg.warmup_epochs * steps_per_epoch))
    peak = scaled_learning_rate(optimizer_cfg.learning_rate, global_batch_size,
                                optimizer_cfg.learning_rate_scaling)
    schedule = WarmupCosineDecay(peak, warmup_steps=warmup,
                                 total_steps=max(total_steps, warmup + 1))
    if peak_learning_rates and not peak > 0:
        raise ValueError("peak_learning_rates need a learning rate > 0 to follow; got "
                         f"{optimizer_cfg.learning_rate!r}.")
    multipliers = {p: own / peak for p, own in (peak_learning_rates or {}).items()}
    return build_optimizer(optimizer_cfg.optimizer, schedule, momentum=optimizer_cfg.momentum,
                           weight_decay=optimizer_cfg.weight_decay,
                           exclude_from_weight_decay=exclude_from_weight_decay,
                           learning_rate_multipliers=multipliers)


def l2_weight_decay_loss(variables, weight_decay, exclude=(BATCH_NORM_PATTERN,)):
    """weight_decay * sum(||v||^2 / 2) over `variables` whose path matches no `exclude` regex.

    Returns a float32 scalar (0 when nothing is left), like SimCLR's `tf.nn.l2_loss` sum.
    """
    _check_non_negative(weight_decay, "weight_decay")
    exclude = _check_patterns(exclude, "exclude")
    terms = [
        0.5 * ops.sum(ops.square(ops.cast(v, "float32")))
        for v in variables
        if not _matches_any(variable_path(v), exclude)
    ]
    if not terms or weight_decay == 0:
        return ops.convert_to_tensor(0.0, dtype="float32")
    return float(weight_decay) * ops.sum(ops.stack(terms))


def weight_decay_loss(name, variables, weight_decay):
    """The L2 term to add to the loss for optimizer `name` (SimCLR's `add_weight_decay`).

    "lars": only the supervised head's non-bias weights (`DEFAULT_EXCLUDES` leave them out
    of LARS's decay); "adamw": none (AdamW decays the head with the rest); "momentum" /
    "adam": every variable except batch-norm ones.
    """
    _check_optimizer_name(name)
    if name == "lars":
        head = [v for v in variables if re.search(SUPERVISED_HEAD_PATTERN, variable_path(v))]
        return l2_weight_decay_loss(head, weight_decay, exclude=("bias",))
    if name == "adamw":
        return l2_weight_decay_loss([], weight_decay)
    return l2_weight_decay_loss(variables, weight_decay, exclude=(BATCH_NORM_PATTERN,))

"""Frozen, validated configuration of a run. Field names are the command-line flag names.

The one source of defaults and choices: the flags (`flags/`) take their defaults from
`DEFAULT_JOB`, the offline default job (SogCLR on Fashion-MNIST at 16x16, ResNet-18 of width
1/4, AdamW, 8 epochs on CPU: `PretrainConfig()`), and their choices from the tuples below; the
library modules take their choices from here too. Each part's own defaults (`DataConfig()`,
...) are SimCLR's CIFAR-like ones; the README's commands show paper settings.

This module imports no TensorFlow: `validate()` of each dataclass checks ranges and choices
without touching TensorFlow or the data, so a bad value fails in milliseconds with a message
naming the flag; checks that need the dataset's metadata or the strategy live in
`training.lifecycle.check_against_data`.
"""

import dataclasses
import typing

from tf_sogclr import checks

# Every choice a flag or config field accepts; the library modules take theirs from here.
LOSSES = ("sogclr", "simclr")
GAMMA_SCHEDULES = ("constant", "cosine")
# How the global losses scale their surrogate: "infonce" divides it by tau, so its gradient is
# InfoNCE's (NT-Xent's, CLIP's) at the same tau; "libauc" keeps the authors' (LibAUC's) value,
# whose gradient is tau times that. docs/algorithm.md, "Gradient scale".
GRADIENT_SCALES = ("infonce", "libauc")
RESNET_DEPTHS = (18, 34, 50, 101, 152)
PROJECTION_HEAD_MODES = ("none", "linear", "nonlinear")
OPTIMIZERS = ("lars", "momentum", "adam", "adamw")
LEARNING_RATE_SCALINGS = ("linear", "sqrt")
TEXT_ENCODERS = ("transformer", "mlp")
TRAIN_MODES = ("pretrain", "finetune")
MIXED_PRECISION = ("none", "mixed_bfloat16", "mixed_float16")
# What pretraining does after a step with a non-finite loss term, projection or gradient (the
# update of that step is never applied): stop with an error, or go on.
NONFINITE_POLICIES = ("stop", "skip")
MODALITIES = ("unimodal", "bimodal")
BIMODAL_TEMPERATURE = 0.03  # --temperature's default with --modality=bimodal (CLIP's start)
# Bounds of a learnable global tau: CLIP and FastCLIP clamp their logit scale 1 / tau to
# [1, 100]. The tau is learnt in log space (losses.learnable_temperature).
TEMPERATURE_RANGE = (0.01, 1.0)
# How SogCLR's learnable global tau gets its gradient: iSogCLR's objective (the two
# directions summed) or FastCLIP-v3's (averaged); docs/algorithm.md, "Image-text".
TEMPERATURE_OBJECTIVES = ("isogclr", "fastclip_v3")
# iSogCLR's rho (the KL divergence from uniform of the negatives' weights that a learned tau
# settles at) when --temperature_rho is unset: LibAUC's unimodal default, and for image-text
# the learnable global tau's default since it was added (LibAUC's bimodal default is 6.0).
TEMPERATURE_RHO = {"unimodal": 0.3, "bimodal": 2.0}
PROBE_EXAMPLES = 10_000  # the default probe set of the frozen-feature evaluation


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which TFDS dataset to read and how to augment it."""

    dataset: str = "fashion_mnist_debian"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    probe_split: str | None = None  # frozen-feature evaluation's probe set and k-NN bank;
    # None: the first PROBE_EXAMPLES of the training split's base split (all if fewer)
    image_size: int = 28
    cache_dataset: bool = True
    color_jitter_strength: float = 0.5
    use_blur: bool = False
    crop_area_min: float = 0.08
    random_flip: bool = True  # off for captions that name left and right
    shuffle_buffer: int = 10_000

    def validate(self):
        if not self.dataset:
            checks.fail("--dataset", "a TFDS dataset name", self.dataset)
        checks.positive_int("--image_size", self.image_size)
        checks.in_range("--color_jitter_strength", self.color_jitter_strength, 0.0, 1.0)
        checks.in_range("--crop_area_min", self.crop_area_min, 0.0, 1.0, low_open=True)
        checks.positive_int("--shuffle_buffer", self.shuffle_buffer)
        if self.probe_split is not None and not self.probe_split.strip():
            checks.fail("--probe_split", "a split (TFDS slicing allowed) or unset",
                        self.probe_split)
        return self


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder and projection head."""

    resnet_depth: int = 18
    width_multiplier: float = 0.125
    small_image_stem: bool = True
    global_bn: bool = True
    batch_norm_decay: float = 0.9
    proj_head_mode: str = "nonlinear"
    proj_out_dim: int = 128
    num_proj_layers: int = 2
    ft_proj_selector: int = 0
    fine_tune_after_block: int = -1

    def validate(self):
        checks.choice("--resnet_depth", self.resnet_depth, RESNET_DEPTHS)
        checks.in_range("--width_multiplier", self.width_multiplier, 0.0, 64.0, low_open=True)
        checks.in_range("--batch_norm_decay", self.batch_norm_decay, 0.0, 1.0, high_open=True)
        checks.choice("--proj_head_mode", self.proj_head_mode, PROJECTION_HEAD_MODES)
        checks.positive_int("--proj_out_dim", self.proj_out_dim)
        checks.positive_int("--num_proj_layers", self.num_proj_layers)
        checks.in_range("--ft_proj_selector", self.ft_proj_selector, 0, self.num_proj_layers)
        checks.in_range("--fine_tune_after_block", self.fine_tune_after_block, -1, 4)
        return self

    @property
    def min_image_size(self):
        """Smallest input the stem and four stages reduce to at least 1x1 (SimCLR's ResNets)."""
        return 8 if self.small_image_stem else 32


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Contrastive loss: SogCLR's global loss or SimCLR's NT-Xent."""

    loss: str = "sogclr"
    temperature: float = 0.1
    gamma: float = 0.9
    gamma_schedule: str = "constant"
    gamma_decay_epochs: int | None = None
    hidden_norm: bool = True
    gradient_scale: str = "infonce"
    # iSogCLR: one learned tau per example (losses.TemperatureTable), starting at temperature.
    individual_temperatures: bool = False
    # The range of every learned tau: the individual ones and the bimodal learnable one.
    temperature_min: float = TEMPERATURE_RANGE[0]
    temperature_max: float = TEMPERATURE_RANGE[1]
    temperature_learning_rate: float = 0.01
    temperature_momentum: float = 0.1
    temperature_gradient_clip: float = 5.0
    temperature_rho: float | None = None  # None: TEMPERATURE_RHO of the modality
    # Gather projections without gradient and add the remote term (losses.local_backward):
    # no collective in the backward pass.
    collective_free_backward: bool = False

    def rho_for(self, modality):
        """iSogCLR's rho for `modality` ("unimodal" or "bimodal")."""
        if self.temperature_rho is not None:
            return self.temperature_rho
        return TEMPERATURE_RHO[modality]

    def temperature_table_arguments(self):
        """`TemperatureTable` arguments with --individual_temperatures, else None."""
        if not self.individual_temperatures:
            return None
        return dict(temperature_range=(self.temperature_min, self.temperature_max),
                    learning_rate=self.temperature_learning_rate,
                    momentum=self.temperature_momentum,
                    gradient_clip=self.temperature_gradient_clip)

    def validate(self):
        checks.choice("--loss", self.loss, LOSSES)
        checks.choice("--gradient_scale", self.gradient_scale, GRADIENT_SCALES)
        checks.in_range("--temperature", self.temperature, 0.0, float("inf"), low_open=True,
                        high_open=True)
        checks.boolean("--individual_temperatures", self.individual_temperatures)
        checks.boolean("--collective_free_backward", self.collective_free_backward)
        if self.temperature_rho is not None:
            checks.in_range("--temperature_rho", self.temperature_rho, 0.0, 100.0)
        # The table's settings are checked whether or not it is on: a bad value is a typo.
        checks.in_range("--temperature_min", self.temperature_min, 0.0, 1.0,
                        low_open=True, high_open=True)
        checks.in_range("--temperature_max", self.temperature_max, self.temperature_min,
                        float("inf"), low_open=True, high_open=True)
        checks.in_range("--temperature_learning_rate", self.temperature_learning_rate,
                        0.0, float("inf"), high_open=True)
        checks.in_range("--temperature_momentum", self.temperature_momentum, 0.0, 1.0,
                        high_open=True)
        checks.in_range("--temperature_gradient_clip", self.temperature_gradient_clip,
                        0.0, float("inf"), low_open=True, high_open=True)
        if self.individual_temperatures:
            if self.loss != "sogclr":
                checks.fail("--individual_temperatures", "false with --loss=simclr (the "
                            "controls keep one tau)", True)
            checks.in_range("--temperature", self.temperature, self.temperature_min,
                            self.temperature_max)
        checks.in_range("--gamma", self.gamma, 0.0, 1.0, low_open=True)
        checks.choice("--gamma_schedule", self.gamma_schedule, GAMMA_SCHEDULES)
        if self.gamma_schedule == "cosine":
            if self.gamma_decay_epochs is None:
                checks.fail("--gamma_decay_epochs",
                            "an integer >= 1 with --gamma_schedule=cosine", None)
            checks.positive_int("--gamma_decay_epochs", self.gamma_decay_epochs)
        elif self.gamma_decay_epochs is not None:
            checks.fail("--gamma_decay_epochs", "unset unless --gamma_schedule=cosine",
                        self.gamma_decay_epochs)
        return self


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser, learning-rate rule and weight decay (SimCLR's defaults)."""

    optimizer: str = "lars"
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    momentum: float = 0.9
    weight_decay: float = 1e-6
    warmup_epochs: float = 0.5

    def validate(self):
        checks.choice("--optimizer", self.optimizer, OPTIMIZERS)
        checks.in_range("--learning_rate", self.learning_rate, 0.0, float("inf"), low_open=True,
                        high_open=True)
        checks.choice("--learning_rate_scaling", self.learning_rate_scaling,
                      LEARNING_RATE_SCALINGS)
        checks.in_range("--momentum", self.momentum, 0.0, 1.0, high_open=True)
        checks.in_range("--weight_decay", self.weight_decay, 0.0, 1.0)
        checks.in_range("--warmup_epochs", self.warmup_epochs, 0.0, float("inf"), high_open=True)
        return self


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Length of training, batch size, checkpoints, execution and precision."""

    model_dir: str = "runs/fashion_mnist_sogclr"
    train_batch_size: int = 256
    train_epochs: int = 2
    train_steps: int = 0
    eval_batch_size: int = 512
    lineareval_while_pretraining: bool = True
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    steps_per_execution: int = 1
    jit_compile: bool = False
    mixed_precision: str = "none"
    seed: int | None = None
    nonfinite_policy: str = "stop"

    def validate(self):
        if not self.model_dir:
            checks.fail("--model_dir", "a directory path", self.model_dir)
        checks.positive_int("--train_batch_size", self.train_batch_size)
        checks.positive_int("--train_epochs", self.train_epochs, allow_zero=True)
        checks.positive_int("--train_steps", self.train_steps, allow_zero=True)
        if self.train_epochs == 0 and self.train_steps == 0:
            checks.fail("--train_epochs", "an integer >= 1 when --train_steps is 0", 0)
        checks.positive_int("--eval_batch_size", self.eval_batch_size)
        checks.positive_int("--checkpoint_epochs", self.checkpoint_epochs, allow_zero=True)
        checks.positive_int("--checkpoint_steps", self.checkpoint_steps, allow_zero=True)
        checks.positive_int("--keep_checkpoint_max", self.keep_checkpoint_max)
        checks.positive_int("--steps_per_execution", self.steps_per_execution)
        checks.choice("--mixed_precision", self.mixed_precision, MIXED_PRECISION)
        checks.choice("--nonfinite_policy", self.nonfinite_policy, NONFINITE_POLICIES)
        if self.seed is not None:
            checks.positive_int("--seed", self.seed, allow_zero=True)
        return self


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything unimodal pretraining (`training.lifecycle.pretrain`) needs."""

    modality: typing.ClassVar[str] = "unimodal"  # Which `training.modalities` entry runs it.

    # The offline default job (`DEFAULT_JOB`, the flags' defaults), chosen by measurement to
    # beat raw pixels within 15 minutes on 2 CPU cores (README, "Quickstart"; bench/README.md,
    # "The default job that beats raw pixels"): 16x16 images, ResNet-18 of width 1/4 (128-d features),
    # SimCLR's ImageNet colour jitter, AdamW (lr 0.004, decoupled decay 0.1), 8 epochs. The
    # parts' own defaults stay SimCLR's CIFAR-like ones, which tests and studies build on.
    data: DataConfig = DataConfig(image_size=16, color_jitter_strength=1.0)
    model: ModelConfig = ModelConfig(width_multiplier=0.25)
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig(optimizer="adamw", learning_rate=0.004,
                                                 weight_decay=0.1)
    run: RunConfig = RunConfig(train_epochs=8)

    def validate(self):
        for part in (self.data, self.model, self.loss, self.optimizer, self.run):
            part.validate()
        if self.data.image_size < self.model.min_image_size:
            stem = "small" if self.model.small_image_stem else "standard"
            checks.fail("--image_size", f">= {self.model.min_image_size} with the {stem} stem "
                        "(--small_image_stem)", self.data.image_size)
        return self


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Text encoder, tokenizer and temperature learning of the bimodal model."""

    text_encoder: str = "transformer"
    vocab_size: int = 1000
    max_text_length: int = 16
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    learnable_temperature: bool = True
    # Peak learning rate of the learnable tau's log (same warm-up and cosine as the model's,
    # not scaled by batch size); None: the model's learning rate (FastCLIP's default).
    learnable_temperature_learning_rate: float | None = None
    temperature_objective: str = TEMPERATURE_OBJECTIVES[0]

    def validate(self):
        checks.choice("--text_encoder", self.text_encoder, TEXT_ENCODERS)
        checks.positive_int("--vocab_size", self.vocab_size)
        if self.vocab_size < 3:
            checks.fail("--vocab_size", "an integer >= 3 (padding, unknown, one token)",
                        self.vocab_size)
        checks.positive_int("--max_text_length", self.max_text_length)
        checks.positive_int("--text_width", self.text_width)
        checks.positive_int("--text_layers", self.text_layers)
        checks.positive_int("--text_heads", self.text_heads)
        if self.text_encoder == "transformer" and self.text_width % self.text_heads:
            checks.fail("--text_width", f"divisible by the {self.text_heads} attention heads",
                        self.text_width)
        checks.boolean("--learnable_temperature", self.learnable_temperature)
        if self.learnable_temperature_learning_rate is not None:
            checks.in_range("--learnable_temperature_learning_rate",
                            self.learnable_temperature_learning_rate, 0.0, float("inf"),
                            low_open=True, high_open=True)
        checks.choice("--temperature_objective", self.temperature_objective,
                      TEMPERATURE_OBJECTIVES)
        return self


@dataclasses.dataclass(frozen=True)
class BimodalConfig:
    """Everything image-text pretraining needs: the unimodal parts plus `text`."""

    modality: typing.ClassVar[str] = "bimodal"

    # The image-text defaults, which run.py gives the flags left unset: 28x28 images and a
    # ResNet-18 of width 1/8 (the parts' own), and the recipe of bench/bimodal_study.py
    # (README, "Image-text at small batch"): AdamW with decoupled decay 0.1, lr
    # 0.000125 * sqrt(B) after a 1-epoch warm-up, then cosine; CLIP's initial temperature,
    # learnt (TextConfig); SogCLR's gamma 0.9, constant (the parts' own); batch 64.
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig(temperature=BIMODAL_TEMPERATURE)
    optimizer: OptimizerConfig = OptimizerConfig(
        optimizer="adamw", learning_rate=0.000125, learning_rate_scaling="sqrt",
        weight_decay=0.1, warmup_epochs=1.0)
    run: RunConfig = RunConfig(train_batch_size=64, lineareval_while_pretraining=False)
    text: TextConfig = TextConfig()

    def validate(self):
        PretrainConfig(self.data, self.model, self.loss, self.optimizer, self.run).validate()
        self.text.validate()
        low, high = self.loss.temperature_min, self.loss.temperature_max
        if self.text.learnable_temperature and not low < self.loss.temperature < high:
            checks.fail("--temperature", f"in (--temperature_min, --temperature_max) = "
                        f"({low}, {high}) with --learnable_temperature (its initial value)",
                        self.loss.temperature)
        if self.text.learnable_temperature and self.loss.individual_temperatures:
            checks.fail("--learnable_temperature", "false with --individual_temperatures "
                        "(one global tau or one per pair, not both: pass "
                        "--nolearnable_temperature)", True)
        if not self.text.learnable_temperature:
            for name, default in (("learnable_temperature_learning_rate", None),
                                  ("temperature_objective", TEMPERATURE_OBJECTIVES[0])):
                if getattr(self.text, name) != default:
                    checks.fail(f"--{name}", f"left at {default} without "
                                "--learnable_temperature (it sets how tau is learnt)",
                                getattr(self.text, name))
        if (self.text.temperature_objective != TEMPERATURE_OBJECTIVES[0]
                and self.loss.loss != "sogclr"):
            checks.fail("--temperature_objective", f"{TEMPERATURE_OBJECTIVES[0]} with "
                        "--loss=simclr (CLIP's tau learns through its logits)",
                        self.text.temperature_objective)
        return self


DEFAULT_JOB = PretrainConfig()  # what `python run.py` runs; the flags' defaults

SMALL_IMAGE_SIZE = 32  # pixels: CIFAR and Fashion-MNIST sizes; fine-tuning does not crop them


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (SimCLR's flag names); data and architecture come from a
    PretrainConfig.

    `fine_tune_after_block` / `ft_proj_selector` None take the model config's values. Defaults
    follow SimCLR's fine-tuning recipe: momentum, lr 0.1 (linear scaling), no decay, no warm-up.
    The input is SimCLR's random resized crop and flip; `finetune_crop_area_min` None picks
    the crop's area range by image size (`crop_area_min_for`).
    """

    checkpoint: str | None = None  # None: newest checkpoint in --model_dir
    zero_init_logits_layer: bool = True
    fine_tune_after_block: int | None = None
    ft_proj_selector: int | None = None
    train_epochs: int = 100
    train_batch_size: int = 256
    learning_rate: float = 0.1
    learning_rate_scaling: str = "linear"
    optimizer: str = "momentum"
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    finetune_dir: str | None = None  # None: <model_dir>/finetune
    finetune_crop_area_min: float | None = None  # None: by image size

    def crop_area_min_for(self, image_size):
        """The fine-tuning crop's smallest area fraction for `image_size`-pixel inputs.

        Unset: 1.0 (the whole image, flipped at random) up to SMALL_IMAGE_SIZE pixels, SimCLR's
        0.08 above. Measured on Fashion-MNIST (28x28), fine-tuning the default job's export
        for 2 epochs on 60,000 labels: test top-1 80.7% at 0.08, 82.6% at 0.3, 86.0% at 0.6,
        89.5% at 1.0 (docs in the README, "Fine-tuning").
        """
        if self.finetune_crop_area_min is not None:
            return self.finetune_crop_area_min
        return 1.0 if image_size <= SMALL_IMAGE_SIZE else DataConfig.crop_area_min

    def validate(self):
        for flag in ("checkpoint", "finetune_dir"):
            value = getattr(self, flag)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                checks.fail(checks.flag(flag), "a non-empty path or unset", value)
        checks.boolean("--zero_init_logits_layer", self.zero_init_logits_layer)
        if self.fine_tune_after_block is not None:
            value = self.fine_tune_after_block
            if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 4:
                checks.fail("--fine_tune_after_block", "an integer in [-1, 4]", value)
        if self.ft_proj_selector is not None:
            checks.positive_int("--ft_proj_selector", self.ft_proj_selector, allow_zero=True)
        checks.positive_int("--train_epochs", self.train_epochs)
        checks.positive_int("--train_batch_size", self.train_batch_size)
        if self.finetune_crop_area_min is not None:
            checks.in_range("--finetune_crop_area_min", self.finetune_crop_area_min, 0.0, 1.0,
                            low_open=True)
        self.optimizer_config.validate()
        return self

    @property
    def optimizer_config(self):
        """The optimiser settings as a `config.OptimizerConfig` (the one optimiser factory,
        `optim.build_scheduled_optimizer`, takes that)."""
        return OptimizerConfig(
            optimizer=self.optimizer, learning_rate=self.learning_rate,
            learning_rate_scaling=self.learning_rate_scaling, momentum=self.momentum,
            weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs)

"""Tests of tf_sogclr.config: defaults that validate, errors that name the flag, and the flags
taking their defaults and choices from the dataclasses (the one source of both)."""

import dataclasses

import pytest
from absl import flags as absl_flags

import flags as _defined_flags  # noqa: F401  (defines the flags)
from tf_sogclr import config

FLAGS = absl_flags.FLAGS
# Each run config's parts as the default job has them (and the text part's defaults): their
# values are the flags' defaults.
FLAGGED_CONFIGS = (config.DEFAULT_JOB.data, config.DEFAULT_JOB.model, config.DEFAULT_JOB.loss,
                   config.DEFAULT_JOB.optimizer, config.DEFAULT_JOB.run, config.TextConfig())
CHOICES = {"loss": config.LOSSES, "gamma_schedule": config.GAMMA_SCHEDULES,
           "gradient_scale": config.GRADIENT_SCALES,
           "proj_head_mode": config.PROJECTION_HEAD_MODES, "optimizer": config.OPTIMIZERS,
           "learning_rate_scaling": config.LEARNING_RATE_SCALINGS,
           "text_encoder": config.TEXT_ENCODERS, "train_mode": config.TRAIN_MODES,
           "mixed_precision": config.MIXED_PRECISION,
           "nonfinite_policy": config.NONFINITE_POLICIES, "modality": config.MODALITIES}


def test_defaults_validate():
    assert config.PretrainConfig().validate().modality == "unimodal"
    assert config.BimodalConfig().validate().modality == "bimodal"
    config.FinetuneConfig().validate()


@pytest.mark.parametrize("part", FLAGGED_CONFIGS, ids=lambda c: type(c).__name__)
def test_flags_take_their_defaults_from_the_default_job(part):
    fields = [f for f in dataclasses.fields(part) if f.name in FLAGS]
    assert fields, part
    for field in fields:
        assert FLAGS[field.name].default == getattr(part, field.name), field.name


def test_the_default_job_is_the_measured_one_and_bimodal_keeps_its_own():
    """DEFAULT_JOB: the configuration that beat raw pixels (bench/README.md); the image-text
    defaults are the bimodal study's recipe (28x28, width 1/8, AdamW, tau 0.03 learnt)."""
    job = config.DEFAULT_JOB.validate()
    assert (job.data.image_size, job.data.color_jitter_strength) == (16, 1.0)
    assert job.model.width_multiplier == 0.25
    assert (job.optimizer.optimizer, job.optimizer.learning_rate,
            job.optimizer.weight_decay) == ("adamw", 0.004, 0.1)
    assert job.run.train_epochs == 8 and job.loss.loss == "sogclr"
    bimodal = config.BimodalConfig().validate()
    assert (bimodal.data.image_size, bimodal.model.width_multiplier) == (28, 0.125)
    # bench/bimodal_study.py's recipe.
    assert bimodal.optimizer == config.OptimizerConfig(
        optimizer="adamw", learning_rate=0.000125, learning_rate_scaling="sqrt",
        weight_decay=0.1, warmup_epochs=1.0)
    assert (bimodal.run.train_batch_size, bimodal.run.train_epochs) == (64, 2)
    assert (bimodal.loss.loss, bimodal.loss.temperature) == ("sogclr", config.BIMODAL_TEMPERATURE)
    assert (bimodal.loss.gamma, bimodal.loss.gamma_schedule) == (0.9, "constant")
    assert bimodal.text.learnable_temperature
    assert bimodal.text.learnable_temperature_learning_rate is None
    assert bimodal.text.temperature_objective == "isogclr"


def test_flags_take_their_choices_from_the_configs():
    for name, choices in CHOICES.items():
        assert tuple(FLAGS[name].parser.enum_values) == tuple(choices), name
    assert FLAGS["resnet_depth"].default in config.RESNET_DEPTHS


def test_finetune_flags_without_their_own_default_inherit_the_model_config():
    # None in FinetuneConfig means "the model config's value"; the flag carries that value.
    assert config.FinetuneConfig.fine_tune_after_block is None
    assert FLAGS["fine_tune_after_block"].default == config.ModelConfig.fine_tune_after_block
    assert config.FinetuneConfig.ft_proj_selector is None
    assert FLAGS["ft_proj_selector"].default == config.ModelConfig.ft_proj_selector
    assert FLAGS["zero_init_logits_layer"].default == config.FinetuneConfig.zero_init_logits_layer


def test_the_finetuning_crop_follows_the_image_size_unless_set():
    unset = config.FinetuneConfig()
    assert FLAGS["finetune_crop_area_min"].default is unset.finetune_crop_area_min is None
    assert unset.crop_area_min_for(28) == unset.crop_area_min_for(config.SMALL_IMAGE_SIZE) == 1.0
    assert unset.crop_area_min_for(config.SMALL_IMAGE_SIZE + 1) == config.DataConfig.crop_area_min
    assert unset.crop_area_min_for(224) == 0.08
    chosen = config.FinetuneConfig(finetune_crop_area_min=0.3).validate()
    assert chosen.crop_area_min_for(28) == chosen.crop_area_min_for(224) == 0.3
    for bad in (0.0, 1.5, "0.5"):
        with pytest.raises(ValueError, match=r"--finetune_crop_area_min must be a number in "
                                             r"\(0.0, 1.0\]"):
            config.FinetuneConfig(finetune_crop_area_min=bad).validate()


def test_bad_bimodal_configs_name_the_flag():
    cfg = config.BimodalConfig()
    with pytest.raises(ValueError, match="--text_encoder must be one of transformer, mlp"):
        dataclasses.replace(cfg, text=config.TextConfig(text_encoder="rnn")).validate()
    with pytest.raises(ValueError, match="--text_width must be divisible by the 4"):
        dataclasses.replace(cfg, text=config.TextConfig(text_width=30)).validate()
    learnable = config.TextConfig(learnable_temperature=True)
    with pytest.raises(ValueError, match=r"--temperature must be in \(--temperature_min, "
                                         r"--temperature_max\) = \(0.01, 1.0\)"):
        dataclasses.replace(cfg, loss=config.LossConfig(temperature=2.0),
                            text=learnable).validate()
    with pytest.raises(ValueError, match=r"--temperature must be in .* = \(0.05, 0.5\)"):
        dataclasses.replace(cfg, loss=config.LossConfig(temperature=0.03, temperature_min=0.05,
                                                        temperature_max=0.5),
                            text=learnable).validate()
    for bad in (0.0, -1e-3, float("inf"), "0.1"):
        with pytest.raises(ValueError, match="--learnable_temperature_learning_rate must be "
                                             r"a number in \(0.0, inf\)"):
            dataclasses.replace(cfg, text=dataclasses.replace(
                learnable, learnable_temperature_learning_rate=bad)).validate()
    with pytest.raises(ValueError, match="--temperature_objective must be one of isogclr, "
                                         "fastclip_v3, got 'fastclip'"):
        dataclasses.replace(cfg, text=dataclasses.replace(
            learnable, temperature_objective="fastclip")).validate()
    # The temperature's own settings without --learnable_temperature would do nothing.
    for field, value in (("learnable_temperature_learning_rate", 1e-4),
                         ("temperature_objective", "fastclip_v3")):
        with pytest.raises(ValueError, match=f"--{field} must be left at .* without "
                                             "--learnable_temperature"):
            dataclasses.replace(cfg, text=config.TextConfig(
                learnable_temperature=False, **{field: value})).validate()
    with pytest.raises(ValueError, match="--temperature_objective must be isogclr with "
                                         "--loss=simclr"):
        dataclasses.replace(cfg, loss=config.LossConfig(loss="simclr", temperature=0.03),
                            text=dataclasses.replace(
                                learnable, temperature_objective="fastclip_v3")).validate()
    dataclasses.replace(cfg, text=dataclasses.replace(
        learnable, learnable_temperature_learning_rate=1e-4,
        temperature_objective="fastclip_v3")).validate()


def test_run_py_gives_unset_flags_the_modality_defaults():
    """`python run.py` runs DEFAULT_JOB; with --modality=bimodal every unset flag takes the
    image-text default instead, and a flag the user sets wins in both."""
    import run as run_py

    def parsed(*args):
        run_py.FLAGS.unparse_flags()
        try:
            run_py.FLAGS(["run.py", *args])
            return run_py.pretrain_config()
        finally:
            run_py.FLAGS.unparse_flags()

    assert parsed() == config.DEFAULT_JOB
    bimodal = parsed("--modality=bimodal", "--train_epochs=3")
    assert bimodal == dataclasses.replace(
        config.BimodalConfig(), run=dataclasses.replace(config.BimodalConfig().run,
                                                        train_epochs=3))
    assert parsed("--image_size=20").data.image_size == 20


def test_the_modality_flag_states_the_image_text_defaults():
    bimodal = config.BimodalConfig()
    text = FLAGS["modality"].help
    for flag, value in (("temperature", bimodal.loss.temperature),
                        ("image_size", bimodal.data.image_size),
                        ("width_multiplier", bimodal.model.width_multiplier),
                        ("color_jitter_strength", bimodal.data.color_jitter_strength),
                        ("optimizer", bimodal.optimizer.optimizer),
                        ("learning_rate", bimodal.optimizer.learning_rate),
                        ("learning_rate_scaling", bimodal.optimizer.learning_rate_scaling),
                        ("weight_decay", bimodal.optimizer.weight_decay),
                        ("warmup_epochs", bimodal.optimizer.warmup_epochs),
                        ("train_batch_size", bimodal.run.train_batch_size),
                        ("train_epochs", bimodal.run.train_epochs)):
        assert f"--{flag}={value}" in text, flag

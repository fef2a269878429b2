"""Tests of tf_sogclr.config: defaults that validate, errors that name the flag, and the flags
taking their defaults and choices from the dataclasses (the one source of both)."""

import dataclasses

import pytest
from absl import flags as absl_flags

import flags as _defined_flags  # noqa: F401  (defines the flags)
from tf_sogclr import config

FLAGS = absl_flags.FLAGS
# Each run config's parts: their defaults are the flags' defaults.
FLAGGED_CONFIGS = (config.DataConfig, config.ModelConfig, config.LossConfig,
                   config.OptimizerConfig, config.RunConfig, config.TextConfig)
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


@pytest.mark.parametrize("config_class", FLAGGED_CONFIGS, ids=lambda c: c.__name__)
def test_flags_take_their_defaults_from_the_configs(config_class):
    fields = [f for f in dataclasses.fields(config_class) if f.name in FLAGS]
    assert fields, config_class
    for field in fields:
        assert FLAGS[field.name].default == field.default, field.name


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
    with pytest.raises(ValueError, match=r"--temperature must be in \(0.005, 1.0\)"):
        dataclasses.replace(cfg, loss=config.LossConfig(temperature=2.0),
                            text=config.TextConfig(learnable_temperature=True)).validate()

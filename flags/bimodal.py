"""Bimodal (image-text, CLIP-style) SogCLR: modality, text encoder, tokenizer, temperature
(defaults: `config.TextConfig`)."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import TextConfig

flags.DEFINE_enum("modality", config.MODALITIES[0], config.MODALITIES,
                  "unimodal: image-image SogCLR / SimCLR; bimodal: an image and a text encoder "
                  "trained on image-caption pairs (captions from class-name templates when the "
                  "dataset has none). With bimodal, --loss=simclr is CLIP's InfoNCE and the "
                  "flags left unset take the image-text defaults (config.BimodalConfig, the "
                  f"recipe of bench/bimodal_study.py: --temperature={config.BIMODAL_TEMPERATURE}"
                  ", --image_size=28, --width_multiplier=0.125, --color_jitter_strength=0.5, "
                  "--optimizer=adamw, --learning_rate=0.000125, --learning_rate_scaling=sqrt, "
                  "--weight_decay=0.1, --warmup_epochs=1.0, --train_batch_size=64, "
                  "--train_epochs=2; --learnable_temperature is on by default).")
flags.DEFINE_enum("text_encoder", TextConfig.text_encoder, config.TEXT_ENCODERS,
                  "Bimodal text encoder: a small pre-norm Transformer, or token embeddings "
                  "mean-pooled into an MLP.")
flags.DEFINE_integer("text_width", TextConfig.text_width,
                     "Bimodal text encoder width (divisible by the attention heads).")
flags.DEFINE_integer("text_layers", TextConfig.text_layers, "Bimodal Transformer blocks.")
flags.DEFINE_integer("vocab_size", TextConfig.vocab_size,
                     "Bimodal tokenizer ids, padding and unknown included; the vocabulary is "
                     "the most frequent training-caption tokens, saved with the model.")
flags.DEFINE_integer("max_text_length", TextConfig.max_text_length,
                     "Bimodal captions are cut or padded to this many tokens.")
flags.DEFINE_bool("learnable_temperature", TextConfig.learnable_temperature,
                  "Bimodal: learn one global temperature in log space, starting at "
                  "--temperature and clamped to [--temperature_min, --temperature_max] "
                  f"(default {config.TEMPERATURE_RANGE}, CLIP's); SogCLR: by "
                  "--temperature_objective with --temperature_rho.")
flags.DEFINE_float("learnable_temperature_learning_rate",
                   TextConfig.learnable_temperature_learning_rate,
                   "Bimodal with --learnable_temperature: the peak learning rate of log tau "
                   "(the model's warm-up and cosine, not scaled by batch size); unset: the "
                   "model's learning rate, as FastCLIP's default.")
flags.DEFINE_enum("temperature_objective", TextConfig.temperature_objective,
                  config.TEMPERATURE_OBJECTIVES,
                  "Bimodal SogCLR with --learnable_temperature: the objective tau follows, "
                  "iSogCLR's tau (log g^I + rho) + tau (log g^T + rho) or FastCLIP-v3's "
                  "tau ((log g^I + log g^T) / 2 + rho); FastCLIP-v3 as published also takes "
                  "--gradient_scale=libauc.")

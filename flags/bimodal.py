"""Bimodal (image-text, CLIP-style) SogCLR: modality, text encoder, tokenizer, temperature."""

from absl import flags

flags.DEFINE_enum("modality", "unimodal", ("unimodal", "bimodal"),
                  "unimodal: image-image SogCLR / SimCLR; bimodal: an image and a text encoder "
                  "trained on image-caption pairs (captions from class-name templates when the "
                  "dataset has none). With bimodal, --loss=simclr is CLIP's InfoNCE and "
                  "--temperature defaults to 0.03.")
flags.DEFINE_enum("text_encoder", "transformer", ("transformer", "mlp"),
                  "Bimodal text encoder: a small pre-norm Transformer, or token embeddings "
                  "mean-pooled into an MLP.")
flags.DEFINE_integer("text_width", 128, "Bimodal text encoder width (divisible by 4 heads).")
flags.DEFINE_integer("text_layers", 2, "Bimodal Transformer blocks.")
flags.DEFINE_integer("vocab_size", 1000,
                     "Bimodal tokenizer ids, padding and unknown included; the vocabulary is "
                     "the most frequent training-caption tokens, saved with the model.")
flags.DEFINE_integer("max_text_length", 16, "Bimodal captions are cut or padded to this many "
                     "tokens.")
flags.DEFINE_bool("learnable_temperature", False,
                  "Bimodal: learn one global temperature in (0.005, 1), starting at "
                  "--temperature (SogCLR: iSogCLR's gradient with --temperature_rho).")
flags.DEFINE_float("temperature_rho", 2.0,
                   "Bimodal SogCLR with --learnable_temperature: iSogCLR's rho, the KL "
                   "divergence of the negatives' weights from uniform that tau settles at "
                   "(keep below log(batch - 1)).")

"""What run.py does: train, evaluate, or both; pretraining or fine-tuning."""

from absl import flags

from tf_sogclr import config
from tf_sogclr.config import DEFAULT_JOB

MODES = ("train", "eval", "train_then_eval", "export")

flags.DEFINE_enum("mode", "train_then_eval", MODES,
                  "train: train only; eval: evaluate the newest (or --checkpoint) checkpoint; "
                  "train_then_eval: both; export: write the SavedModel of the newest (or "
                  "--checkpoint) checkpoint.")
flags.DEFINE_enum("train_mode", config.TRAIN_MODES[0], config.TRAIN_MODES,
                  "pretrain: contrastive pretraining; finetune: supervised fine-tuning from "
                  "--checkpoint or a pretraining checkpoint in --model_dir.")
flags.DEFINE_bool("lineareval_while_pretraining", DEFAULT_JOB.run.lineareval_while_pretraining,
                  "Train a linear head on stop_gradient(features) during pretraining.")
flags.DEFINE_bool("eval_knn", True,
                  "In evaluation, also score the frozen encoder features by k-NN (k=200, "
                  "cosine, temperature-weighted votes) and a linear probe against "
                  "--probe_split, beside raw pixels scored the same way.")
flags.DEFINE_integer("knn_k", 200, "Neighbours of the k-NN evaluation.", lower_bound=1)
flags.DEFINE_float("knn_temperature", 0.1, "Temperature of the k-NN vote weights exp(sim/T).",
                   lower_bound=1e-6)

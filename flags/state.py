"""Where state goes: model_dir, checkpoints, exports, fine-tuning sources (defaults:
`config.DEFAULT_JOB.run` and `.model`, `config.FinetuneConfig`)."""

from absl import flags

from tf_sogclr.config import DEFAULT_JOB, FinetuneConfig

flags.DEFINE_string("model_dir", DEFAULT_JOB.run.model_dir,
                    "Checkpoints, TensorBoard logs and exports (local or gs://). A run resumes "
                    "from the newest checkpoint here.")
flags.DEFINE_string("checkpoint", None,
                    "Checkpoint to evaluate or fine-tune from (a checkpoint prefix, a directory "
                    "of checkpoints, or an exported SavedModel for fine-tuning; 'none' "
                    "fine-tunes a randomly initialised encoder: the supervised baseline).")
flags.DEFINE_integer("checkpoint_epochs", DEFAULT_JOB.run.checkpoint_epochs,
                     "Checkpoint every this many epochs (0: only at the end, unless "
                     "--checkpoint_steps).")
flags.DEFINE_integer("checkpoint_steps", DEFAULT_JOB.run.checkpoint_steps,
                     "Checkpoint every this many steps (overrides --checkpoint_epochs when > 0).")
flags.DEFINE_integer("keep_checkpoint_max", DEFAULT_JOB.run.keep_checkpoint_max,
                     "Checkpoints to keep.")
flags.DEFINE_integer("keep_hub_module_max", 1, "Exported SavedModels to keep.")
flags.DEFINE_bool("zero_init_logits_layer", FinetuneConfig.zero_init_logits_layer,
                  "Fine-tuning: zero-initialise the classifier.")
flags.DEFINE_integer("fine_tune_after_block", DEFAULT_JOB.model.fine_tune_after_block,
                     "Fine-tuning: -1 trains all; k freezes the stem and block groups 1..k.")
flags.DEFINE_string("export_dir", None,
                    "Where SavedModels go; default <model_dir>/saved_model/<step>.")

"""End-to-end tests of run.py, as a user runs it: real subprocesses on a small data slice."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_sogclr import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = config.DEFAULT_JOB.data.image_size  # what run.py trains on unless told
TINY = ["--width_multiplier=0.0625", "--proj_out_dim=8", "--train_batch_size=16",
        "--eval_batch_size=64", "--knn_k=5"]


def run(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def summary_of(stdout):
    return json.loads(stdout[stdout.index("Summary:") + len("Summary:"):])


def test_train_then_eval_exports_and_evaluates(small_fashion_mnist, tmp_path):
    model_dir = str(tmp_path / "run")
    done = run(f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}",
               "--train_steps=3", "--checkpoint_steps=2", *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(done.stdout)
    assert summary["step"] == 3
    # The start-up line and the summary say how the run is distributed.
    assert summary["distribution"] == {
        "strategy": "DefaultStrategy", "workers": 1, "replicas": 1,
        "global_batch_size": 16, "per_replica_batch_size": 16, "xla": False,
        "mixed_precision": "float32"}
    assert ("Run: DefaultStrategy, 1 worker, 1 replica, global batch 16 (16 per "
            "replica), XLA off, precision float32") in done.stdout
    assert summary["checkpoint"].endswith("ckpt-3")
    assert summary["export"] == os.path.join(model_dir, "saved_model", "3")
    assert os.path.isfile(os.path.join(summary["export"], "saved_model.pb"))
    scores = summary["eval"]
    for name in ("linear_top1", "linear_top5", "knn_top1", "linear_probe_top1",
                 "raw_pixels_knn_top1", "raw_pixels_linear_probe_top1"):
        assert 0.0 <= scores[name] <= 1.0, name
    assert scores["linear_top5"] >= scores["linear_top1"]
    # 128 training images: the raw-pixel probe fits its training set, as a linear model of
    # 256 inputs (16x16) can; it is the same protocol as the encoder's.
    assert scores["raw_pixels_linear_probe_train_top1"] == 1.0
    assert os.listdir(os.path.join(model_dir, "train")) and os.listdir(os.path.join(model_dir, "eval"))

    again = run(f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", "--mode=eval",
                "--eval_knn=false", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(again.stdout)["eval"]["linear_top1"] == pytest.approx(scores["linear_top1"])

    exported = run(f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", "--mode=export",
                   f"--export_dir={tmp_path / 'exports'}", *TINY)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert summary_of(exported.stdout)["export"] == str(tmp_path / "exports" / "3")
    assert os.path.isfile(tmp_path / "exports" / "3" / "saved_model.pb")

    tuned = run(f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}",
                "--train_mode=finetune", "--train_epochs=1", "--learning_rate=0.05", *TINY)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    tuned_summary = summary_of(tuned.stdout)
    # The optimiser flags left unset take the fine-tuning recipe's defaults (SimCLR's), not
    # pretraining's LARS; the one set wins; the start-up line says which is which.
    assert tuned_summary["finetune_recipe"] == {
        "optimizer": "momentum", "learning_rate": 0.05, "learning_rate_scaling": "linear",
        "momentum": 0.9, "weight_decay": 0.0, "warmup_epochs": 0.0}
    assert ("Fine-tuning recipe: --optimizer=momentum, --learning_rate=0.05, "
            "--learning_rate_scaling=linear, --momentum=0.9, --weight_decay=0.0, "
            "--warmup_epochs=0.0 (fine-tuning defaults for the unset --optimizer, "
            "--learning_rate_scaling, --momentum, --weight_decay, --warmup_epochs)"
            in tuned.stdout)
    # The default job's small images (16 px): the fine-tuning input flips the whole image,
    # no crop (the measured default up to 32 px).
    assert tuned_summary["finetune_crop_area_min"] == 1.0
    assert ("Fine-tuning input: random resized crop of area [1.0, 1] and flip "
            f"(--finetune_crop_area_min unset: the default for {SIZE}-px images)"
            in tuned.stdout)
    assert tuned_summary["finetune_dir"] == os.path.join(model_dir, "finetune")
    assert 0.0 <= tuned_summary["eval"]["top1"] <= tuned_summary["eval"]["top5"] <= 1.0
    # Beside it, the floor: raw pixels fit on the same 128 labels, which a linear model of
    # 256 inputs separates, scored on the same test split.
    assert tuned_summary["eval"]["raw_pixels_linear_probe_train_top1"] == 1.0
    for name in ("raw_pixels_linear_probe_top1", "raw_pixels_knn_top1"):
        assert 0.1 < tuned_summary["eval"][name] <= 1.0, name
    from tf_sogclr import export
    loaded = export.load_encoder(tuned_summary["export"])
    outputs = loaded(np.zeros((2, SIZE, SIZE, 1), np.float32))
    assert outputs["logits"].shape == (2, 10) and "features" in outputs


@pytest.mark.parametrize("args, message", [
    (["--loss=infonce"], "--loss=infonce: value should be one of <sogclr|simclr>"),
    (["--gamma=1.5"], "--gamma must be a number in (0.0, 1.0], got 1.5."),
    (["--gamma_schedule=cosine"], "--gamma_decay_epochs must be an integer >= 1"),
    (["--image_size=4"], "--image_size must be >= 8 with the small stem"),
    (["--train_batch_size=1000"], "--train_batch_size=1000 is larger than split 'train'"),
    (["--train_split=validation"], "split"),
    (["--mode=eval"], "--mode=eval needs --checkpoint or a checkpoint in --model_dir"),
    (["--dataset=imagenet2012_nope"], "imagenet2012_nope"),
    (["--individual_temperatures", "--loss=simclr"],
     "--individual_temperatures must be false with --loss=simclr"),
    (["--individual_temperatures", "--temperature=0.005"],
     "--temperature must be a number in [0.01, 1.0], got 0.005."),
])
def test_bad_flags_exit_with_one_line_and_write_nothing(small_fashion_mnist, tmp_path, args, message):
    model_dir = tmp_path / "run"
    done = run(f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", *TINY, *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run.py: error:"), done.stderr
    assert message in lines[0]
    assert not model_dir.exists()


def test_individual_temperatures_train_collective_free_and_resume(small_fashion_mnist, tmp_path):
    """run.py with iSogCLR's tables and the collective-free backward: the summary reports the
    temperatures, the checkpoint holds the tau table, and a longer run resumes from it."""
    import tensorflow as tf

    model_dir = str(tmp_path / "run")
    flags = [f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", "--mode=train",
             "--individual_temperatures", "--collective_free_backward",
             "--temperature_min=0.05", "--temperature_max=0.5", "--checkpoint_steps=2", *TINY]
    done = run(*flags, "--train_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    train = summary_of(done.stdout)["train"]
    assert 0.05 <= train["temperature_min"] <= train["temperature_mean"] <= train[
        "temperature_max"] <= 0.5, train
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "ckpt-2"))
    taus = [k for k in reader.get_variable_to_shape_map() if "temperature_table" in k]
    assert len(taus) == 2, taus  # tau and its gradient's moving average
    tau = reader.get_tensor(next(k for k in taus if "tau_gradient" not in k))
    assert tau.shape == (128,) and np.all((tau >= 0.05) & (tau <= 0.5))
    assert np.sum(tau != 0.1) >= 16  # the rows of two batches of 16 moved
    resumed = run(*flags, "--train_steps=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and summary_of(resumed.stdout)["step"] == 3


def test_helpfull_documents_the_flags():
    done = run("--helpfull")  # absl prints the help and exits with status 1.
    for group in ("flags.modes:", "flags.loss:", "flags.data:", "flags.model:", "flags.optimizer:",
                  "flags.state:", "flags.hardware:"):
        assert group in done.stdout, group
    for flag in ("--train_mode", "--gamma_schedule", "--width_multiplier", "--steps_per_execution",
                 "--keep_hub_module_max", "--mixed_precision", "--[no]lineareval_while_pretraining"):
        assert flag in done.stdout, flag


@pytest.mark.parametrize("verbose", [False, True])
def test_native_import_output_is_kept_off_stderr_and_logged(tmp_path, verbose):
    """What a module's native code writes to fd 2 at import (TensorFlow's oneDNN lines on
    AVX-512 / AMX CPUs) stays off stderr; absl logging at INFO shows it; a failing import
    prints it as it came."""
    (tmp_path / "noisy.py").write_text(
        "import os\nos.write(2, b'native noise\\n')\n"
        "if os.environ.get('FAIL'):\n    raise ImportError('broken')\n")
    script = ("import sys; sys.path[:0] = [%r, %r]\n"
              "from absl import logging\n"
              "logging.set_verbosity(logging.INFO if %r else logging.WARNING)\n"
              "import run\nrun.import_quietly('noisy')\nprint('imported')\n"
              % (REPO, str(tmp_path), verbose))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
    lines = [line for line in done.stderr.splitlines() if "noise" in line]
    if verbose:
        assert len(lines) == 1 and lines[0].endswith("noisy at import: native noise"), lines
    else:
        assert lines == [], done.stderr

    failed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, FAIL="1"))
    assert failed.returncode != 0
    assert "native noise" in failed.stderr and "ImportError: broken" in failed.stderr


def test_run_py_bimodal_trains_evaluates_and_exports(small_fashion_mnist, tmp_path):
    from tf_sogclr import export
    from tf_sogclr.training import modalities

    model_dir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "run.py"), "--modality=bimodal",
         f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", "--train_steps=3",
         "--checkpoint_steps=2", "--train_batch_size=16", "--eval_batch_size=64",
         "--width_multiplier=0.0625", "--proj_out_dim=8", "--text_encoder=mlp",
         "--text_width=16", "--vocab_size=64", "--max_text_length=8",
         "--learnable_temperature", "--learnable_temperature_learning_rate=0.001",
         "--temperature_objective=fastclip_v3", "--temperature_min=0.02"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(done.stdout)
    assert summary["step"] == 3 and summary["checkpoint"].endswith("ckpt-3")
    assert summary["train"]["bad_steps"] == 0
    assert 0.02 <= summary["train"]["temperature"] <= 1.0
    scores = summary["eval"]
    assert 0.0 <= scores["zero_shot_top1"] <= 1.0
    for direction in ("image_to_text", "text_to_image"):
        recall = [scores[f"{direction}_recall@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= recall[0] <= recall[1] <= recall[2] <= 1.0, (direction, recall)
    assert scores["num_images"] == 128
    vocabulary = modalities.vocabulary_from_checkpoint(summary["checkpoint"])
    assert vocabulary[:2] == ["", "[UNK]"] and "sneaker" in vocabulary
    assert summary["export"] == os.path.join(model_dir, "saved_model", "3")
    loaded = export.LoadedDualEncoder(summary["export"])
    assert loaded.encode_text(["a photo of a bag."]).shape == (1, 8)

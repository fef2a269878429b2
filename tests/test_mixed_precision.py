"""Every run.py path under mixed precision, run as run.py runs it.

The matrix {unimodal, bimodal} x {none, mixed_bfloat16, mixed_float16} x {XLA off, on (one
device)} runs `run.main` in process on absl flags parsed as on the command line (the same code
path as `python run.py ...`, without a new interpreter per cell); eval, export and fine-tuning
under mixed_bfloat16 follow. One subprocess runs the README's Cloud TPU command on tiny sizes.

Under a mixed policy, Keras layers compute in float16 or bfloat16 and keep float32 weights:
losses, metrics, u-tables, temperatures and every exported output must stay float32.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import precision
import run as run_py
from tf_sogclr import export


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("none", "mixed_bfloat16", "mixed_float16")
TINY = ["--width_multiplier=0.0625", "--proj_out_dim=8", "--train_batch_size=16",
        "--eval_batch_size=64", "--knn_k=5", "--image_size=16", "--train_steps=2",
        "--eval_steps=1", "--warmup_epochs=0", "--seed=0"]
TINY_TEXT = ["--modality=bimodal", "--text_encoder=transformer", "--text_width=16",
             "--text_layers=1", "--vocab_size=64", "--max_text_length=8",
             "--learnable_temperature"]


def run_in_process(*args):
    """`python run.py *args` in this process: the run's summary dict.

    The flags go through absl's parser (so `.present` and the checks behave as on the command
    line) and are reset afterwards, and so is the global mixed-precision policy.
    """
    run_py.FLAGS.unparse_flags()
    try:
        run_py.FLAGS(["run.py", *args])
        return run_py.main(["run.py"])
    finally:
        run_py.FLAGS.unparse_flags()
        keras.mixed_precision.set_global_policy("float32")


def checkpoint_dtypes(path):
    """{variable name: dtype} of checkpoint `path`, dropping optimiser slots and metadata."""
    dtypes = tf.train.load_checkpoint(path).get_variable_to_dtype_map()
    return {k: v for k, v in dtypes.items() if "optimizer" not in k and "_CHECKPOINTABLE" not in k}


def assert_float32_state(checkpoint):
    """u-tables, temperatures and every weight of `checkpoint` are float32 (integer counters
    and the tokenizer's strings aside)."""
    dtypes = checkpoint_dtypes(checkpoint)
    floats = {k: v for k, v in dtypes.items() if v.is_floating}
    assert floats and all(v == tf.float32 for v in floats.values()), {
        k: v for k, v in floats.items() if v != tf.float32}
    return dtypes


def assert_unimodal_summary(summary, model_dir):
    assert summary["step"] == 2 and summary["checkpoint"].endswith("ckpt-2")
    assert summary["train"]["bad_steps"] == 0
    assert all(np.isfinite(v) for v in summary["train"].values()), summary["train"]
    scores = summary["eval"]
    for name in ("linear_top1", "linear_top5", "knn_top1"):
        assert 0.0 <= scores[name] <= 1.0, name
    assert scores["linear_top5"] >= scores["linear_top1"]
    assert np.isfinite(scores["linear_loss"])
    dtypes = assert_float32_state(summary["checkpoint"])
    assert any("u_table" in k for k in dtypes)
    loaded = export.load_encoder(summary["export"])
    outputs = loaded(np.full((2, 16, 16, 1), 0.5, np.float32))
    assert {k: v.dtype for k, v in outputs.items()} == {
        "features": tf.float32, "projection": tf.float32, "logits": tf.float32}
    assert all(np.all(np.isfinite(v)) for v in outputs.values())
    assert summary["export"] == os.path.join(model_dir, "saved_model", "2")


def assert_bimodal_summary(summary):
    assert summary["step"] == 2 and summary["train"]["bad_steps"] == 0
    assert all(np.isfinite(v) for v in summary["train"].values()), summary["train"]
    assert 0.01 <= summary["train"]["temperature"] <= 1.0
    scores = summary["eval"]
    for name in ("zero_shot_top1", "image_to_text_recall@1", "image_to_text_recall@5"):
        assert 0.0 <= scores[name] <= 1.0, name
    dtypes = assert_float32_state(summary["checkpoint"])
    assert sum("u_table" in k for k in dtypes) == 2
    assert any("log_temperature" in k for k in dtypes)
    loaded = export.LoadedDualEncoder(summary["export"])
    image = loaded.encode_image(np.full((2, 16, 16, 1), 0.5, np.float32))
    text = loaded.encode_text(["a photo of a bag.", "a photo of a shirt."])
    assert image.dtype == text.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("modality", ["unimodal", "bimodal"])
def test_train_then_eval(small_fashion_mnist, tmp_path, modality, policy, jit_compile):
    model_dir = str(tmp_path / "run")
    args = [f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", *TINY,
            f"--mixed_precision={policy}", f"--jit_compile={jit_compile}"]
    if modality == "bimodal":
        summary = run_in_process(*args, *TINY_TEXT)
        assert_bimodal_summary(summary)
    else:
        summary = run_in_process(*args)
        assert_unimodal_summary(summary, model_dir)


@pytest.mark.parametrize("modality", ["unimodal", "bimodal"])
def test_eval_and_export_of_a_mixed_bfloat16_checkpoint(small_fashion_mnist, tmp_path, modality):
    model_dir = str(tmp_path / "run")
    args = [f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", *TINY,
            "--mixed_precision=mixed_bfloat16"]
    if modality == "bimodal":
        args += TINY_TEXT
    trained = run_in_process(*args, "--mode=train")
    evaluated = run_in_process(*args, "--mode=eval")
    exported = run_in_process(*args, "--mode=export", f"--export_dir={tmp_path / 'exports'}")
    assert evaluated["eval"]["step"] == exported["step"] == trained["step"] == 2
    assert exported["export"] == str(tmp_path / "exports" / "2")
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 1)).astype(np.float32)
    if modality == "bimodal":
        assert set(evaluated["eval"]) >= {"zero_shot_top1", "image_to_text_recall@1"}
        first = export.LoadedDualEncoder(trained["export"]).encode_image(images)
        second = export.LoadedDualEncoder(exported["export"]).encode_image(images)
    else:
        assert 0.0 <= evaluated["eval"]["linear_top1"] <= evaluated["eval"]["linear_top5"] <= 1.0
        first = export.load_encoder(trained["export"]).features(images)
        second = export.load_encoder(exported["export"]).features(images)
    # The same weights, exported by two processes' graphs: equal up to bfloat16 rounding.
    assert first.dtype == second.dtype == tf.float32
    precision.assert_close_in("bfloat16", second, first)


def test_finetune_under_mixed_bfloat16(small_fashion_mnist, tmp_path):
    model_dir = str(tmp_path / "run")
    args = [f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", *TINY,
            "--mixed_precision=mixed_bfloat16"]
    pretrained = run_in_process(*args, "--mode=train")
    tuned = run_in_process(*args, "--train_mode=finetune", "--train_epochs=1",
                           "--optimizer=momentum", "--learning_rate=0.1", "--weight_decay=0",
                           f"--checkpoint={pretrained['export']}")
    assert 0.0 <= tuned["eval"]["top1"] <= tuned["eval"]["top5"] <= 1.0
    loaded = export.load_encoder(tuned["export"])
    outputs = loaded(np.zeros((2, 16, 16, 1), np.float32))
    assert outputs["logits"].shape == (2, 10) and outputs["logits"].dtype == tf.float32
    assert outputs["features"].dtype == tf.float32


def test_readme_tpu_command_on_tiny_sizes(small_fashion_mnist, tmp_path):
    """The README's "Paper settings on Cloud TPU" flags (but the TPU, dataset and sizes), as a
    user runs them: train, evaluate and export under mixed_bfloat16 with XLA."""
    model_dir = str(tmp_path / "run")
    command = [
        sys.executable, os.path.join(REPO, "run.py"), f"--data_dir={small_fashion_mnist}",
        "--train_split=train", "--eval_split=test", "--image_size=16",
        "--resnet_depth=18", "--width_multiplier=0.0625", "--small_image_stem=true",
        "--use_blur", "--color_jitter_strength=1.0", "--cache_dataset=false",
        "--loss=sogclr", "--temperature=0.1", "--gamma=0.9", "--gradient_scale=libauc",
        "--optimizer=lars", "--learning_rate=0.075", "--learning_rate_scaling=sqrt",
        "--weight_decay=1e-6", "--warmup_epochs=1", "--train_steps=20",
        "--train_batch_size=32", "--eval_batch_size=64", "--eval_steps=2",
        "--proj_head_mode=nonlinear", "--num_proj_layers=2", "--proj_out_dim=16", "--global_bn",
        "--mixed_precision=mixed_bfloat16", "--steps_per_execution=10", "--jit_compile",
        f"--model_dir={model_dir}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("Summary:") + len("Summary:"):])
    assert summary["step"] == 20 and summary["train"]["bad_steps"] == 0
    assert 0.0 <= summary["eval"]["linear_top1"] <= summary["eval"]["linear_top5"] <= 1.0
    assert 0.0 <= summary["eval"]["knn_top1"] <= 1.0
    assert os.path.isfile(os.path.join(summary["export"], "saved_model.pb"))

"""Reliability: killed and preempted runs, atomic checkpoints, non-finite steps, bad data.

The end-to-end test runs run.py in real subprocesses and kills them with SIGKILL at
controlled moments (while a checkpoint is being committed, while an export is being written)
and sends one SIGTERM; each subprocess runs in its own process group, bounded in time and
killed in a `finally`. The moments are made deterministic by a small driver that patches one
function inside the subprocess to pause (and write a marker file) at that point, then runs
run.py unchanged.
"""

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr import config, data, export
from tf_sogclr import models as model_lib
from tf_sogclr.data import augment, captions
from tf_sogclr.data import fashion_mnist
from tf_sogclr.training import checkpoints
from tf_sogclr.training import lifecycle
from tf_sogclr.training import loop as training_loop
from tf_sogclr.training import modalities

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width_multiplier=0.0625", "--proj_out_dim=8", "--train_batch_size=16",
        "--image_size=8", "--lineareval_while_pretraining=false", "--train_steps=8",
        "--checkpoint_steps=2", "--mode=train"]
RUN_TIMEOUT = 240  # seconds, per subprocess

# Runs run.py after patching one function to pause at a moment named by RELIABILITY_PAUSE:
# "commit:<n>"  before the index of ckpt-<n> is moved into place (its data shards already are);
# "export"      after the SavedModel is written to its temporary directory, before the rename;
# "step:<n>"    at the execution boundary after step n (the progress bar update).
# Pausing writes the file RELIABILITY_MARKER, then waits (at most 120 s) for <marker>.go.
DRIVER = r"""
import os, pathlib, runpy, sys, time
sys.path.insert(0, os.environ["RELIABILITY_REPO"])
os.chdir(os.environ["RELIABILITY_REPO"])
marker = os.environ["RELIABILITY_MARKER"]
kind, _, arg = os.environ["RELIABILITY_PAUSE"].partition(":")

def pause():
    pathlib.Path(marker).write_text("paused")
    for _ in range(1200):
        if os.path.exists(marker + ".go"):
            return
        time.sleep(0.1)

import keras
import tensorflow as tf

if kind == "commit":
    rename = tf.io.gfile.rename
    def paused_rename(src, dst, overwrite=False):
        if dst.endswith(f"ckpt-{arg}.index"):
            pause()
        return rename(src, dst, overwrite)
    tf.io.gfile.rename = paused_rename
elif kind == "export":
    save = tf.saved_model.save
    def paused_save(*args, **kwargs):
        result = save(*args, **kwargs)
        pause()
        return result
    tf.saved_model.save = paused_save
elif kind == "step":
    update = keras.utils.Progbar.update
    def paused_update(self, current, *args, **kwargs):
        update(self, current, *args, **kwargs)
        if current == int(arg):
            pause()
    keras.utils.Progbar.update = paused_update
sys.argv = ["run.py"] + sys.argv[1:]
runpy.run_path("run.py", run_name="__main__")
"""


class Run:
    """run.py (or the pausing driver) in its own process group; output in files."""

    def __init__(self, tmp_path, name, args, pause=None):
        self.marker = str(tmp_path / f"{name}.paused")
        self.stdout_path, self.stderr_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", RELIABILITY_REPO=REPO,
                   RELIABILITY_MARKER=self.marker, RELIABILITY_PAUSE=pause or "none")
        command = ([sys.executable, "-c", DRIVER] if pause else
                   [sys.executable, os.path.join(REPO, "run.py")])
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(command + list(args), cwd=REPO, env=env, stdout=out,
                                            stderr=err, start_new_session=True)

    def wait_for_pause(self):
        deadline = time.monotonic() + RUN_TIMEOUT
        while not os.path.exists(self.marker):
            assert self.process.poll() is None, f"exited before pausing:\n{self.stderr()}"
            assert time.monotonic() < deadline, "never paused"
            time.sleep(0.2)

    def resume(self):
        open(self.marker + ".go", "w").close()

    def signal(self, signum):
        os.killpg(self.process.pid, signum)

    def wait(self):
        try:
            return self.process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run.py still running after {RUN_TIMEOUT} s:\n{self.stderr()}")

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stdout(self):
        return self.stdout_path.read_text()

    def stderr(self):
        return self.stderr_path.read_text()[-3000:]

    def summary(self):
        text = self.stdout()
        return json.loads(text[text.index("Summary:") + len("Summary:"):])


def run_to_end(tmp_path, name, args, pause=None, act=None):
    """Starts a run; `act(run)` after it pauses (if `pause`); returns it ended, always killed."""
    run = Run(tmp_path, name, args, pause)
    try:
        if pause:
            run.wait_for_pause()
            act(run)
        run.wait()
    finally:
        run.kill()
    return run


def iterations(prefix):
    return int(tf.train.load_checkpoint(prefix).get_tensor(
        "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def test_killed_and_preempted_run_resumes_and_finishes(small_fashion_mnist, tmp_path):
    model_dir = tmp_path / "run"
    args = [f"--data_dir={small_fashion_mnist}", f"--model_dir={model_dir}", *TINY]
    ckpt = lambda n: str(model_dir / f"ckpt-{n}")  # noqa: E731

    # 1. SIGKILL after the first checkpoint, while the second is being committed (its data
    #    shards are in place, its index not yet): ckpt-2 stays the newest complete one.
    run_to_end(tmp_path, "killed_in_checkpoint", args, "commit:4",
               lambda run: run.signal(signal.SIGKILL))
    assert os.path.exists(ckpt(4) + ".data-00000-of-00001")
    assert not os.path.exists(ckpt(4) + ".index")
    assert checkpoints.latest_checkpoint(str(model_dir)) == ckpt(2)
    assert tf.train.latest_checkpoint(str(model_dir)) == ckpt(2)
    assert checkpoints.is_complete_checkpoint(ckpt(2)) and iterations(ckpt(2)) == 2

    # 2. The same command resumes from ckpt-2; SIGTERM after step 5 (between checkpoints):
    #    it saves ckpt-5 at that execution boundary and exits with status 143.
    def sigterm(run):
        run.signal(signal.SIGTERM)
        run.resume()

    preempted = run_to_end(tmp_path, "preempted", args, "step:5", sigterm)
    assert preempted.process.returncode == 143, preempted.stderr()
    assert f"Resuming from {ckpt(2)} (step 2)" in preempted.stdout()
    summary = preempted.summary()
    assert summary["preempted"] is True and summary["step"] == 5
    assert summary["checkpoint"] == ckpt(5) and iterations(ckpt(5)) == 5
    assert "export" not in summary
    assert checkpoints.is_complete_checkpoint(ckpt(4))  # rewritten by this run

    # 3. Resumes from ckpt-5, finishes training; SIGKILL while the export is being written.
    run_to_end(tmp_path, "killed_in_export", args, "export",
               lambda run: run.signal(signal.SIGKILL))
    assert checkpoints.latest_checkpoint(str(model_dir)) == ckpt(8) and iterations(ckpt(8)) == 8
    assert export.latest_export(str(model_dir / "saved_model")) is None
    assert not os.path.exists(model_dir / "saved_model" / "8")

    # 4. The same command once more: nothing left to train, the export is written.
    done = run_to_end(tmp_path, "finished", args)
    assert done.process.returncode == 0, done.stderr()
    summary = done.summary()
    assert summary["step"] == 8 and summary["checkpoint"] == ckpt(8)
    assert summary["export"] == str(model_dir / "saved_model" / "8")
    assert export.latest_export(str(model_dir / "saved_model")) == summary["export"]
    features = export.load_encoder(summary["export"]).features(tf.zeros([2, 8, 8, 1]))
    assert features.shape[0] == 2 and np.all(np.isfinite(features))
    assert sorted(p for p in os.listdir(model_dir) if p.startswith("ckpt-")) == [
        f"ckpt-{n}.{suffix}" for n in (2, 4, 5, 6, 8)  # --keep_checkpoint_max=5
        for suffix in ("data-00000-of-00001", "index")]


# --------------------------------------------------------------------------- checkpoints


def test_atomic_checkpoints_ignore_and_clean_what_kills_leave(tmp_path):
    variable = tf.Variable([1.0, 2.0])
    checkpoint = tf.train.Checkpoint(v=variable)
    directory = str(tmp_path)
    manager = checkpoints.AtomicCheckpointManager(checkpoint, directory, max_to_keep=2)
    for step in (2, 4, 6):
        variable.assign_add([1.0, 1.0])
        manager.save(step)
    prefix = lambda n: os.path.join(directory, f"ckpt-{n}")  # noqa: E731
    assert manager.checkpoints == [prefix(4), prefix(6)]
    assert tf.train.latest_checkpoint(directory) == prefix(6)

    # What kills leave: an index cut short (writers that write it in place), the shards of a
    # save killed before its commit, staging and temporary directories of unfinished saves.
    index = open(prefix(6) + ".index", "rb").read()
    open(prefix(6) + ".index", "wb").write(index[:len(index) // 2])
    open(prefix(8) + ".data-00000-of-00001", "wb").write(b"partial")
    os.makedirs(os.path.join(directory, ".staging-ckpt-10-123-abcdef01"))
    os.makedirs(prefix(10) + "_temp")
    assert checkpoints.latest_checkpoint(directory) == prefix(4)
    assert checkpoints.latest_checkpoint(prefix(6)) is None  # a named prefix must be complete too
    assert not checkpoints.is_complete_checkpoint(prefix(8))

    # The next writer removes the debris and points the state file at ckpt-4.
    manager = checkpoints.AtomicCheckpointManager(checkpoint, directory, max_to_keep=2)
    assert sorted(os.listdir(directory)) == [
        "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    assert tf.train.latest_checkpoint(directory) == prefix(4)
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    np.testing.assert_array_equal(variable.numpy(), [3.0, 4.0])


# --------------------------------------------------------------------------- non-finite


def tiny_config(data_dir, model_dir, dataset="fashion_mnist_debian", eval_split="test", **run):
    """ResNet-18 of width 1/16 on 8x8 crops, batch 16, 4 steps, checkpoints every 2."""
    run = {"model_dir": str(model_dir), "train_batch_size": 16, "train_steps": 4,
           "checkpoint_steps": 2, "lineareval_while_pretraining": False, "seed": 1, **run}
    return config.PretrainConfig(
        data=config.DataConfig(dataset=dataset, data_dir=data_dir, image_size=8,
                               eval_split=eval_split),
        model=config.ModelConfig(width_multiplier=0.0625, proj_out_dim=8),
        optimizer=config.OptimizerConfig(learning_rate=0.1, warmup_epochs=0.0),
        run=config.RunConfig(**run))


def nan_batches(data_dir, bad_batch):
    """A `dataset_fn`: 8x8 batches of 16 in index order; batch `bad_batch` has a NaN image."""
    def fn(context):
        del context

        def views(i, example):
            image = tf.image.resize(tf.cast(example["image"], tf.float32) / 255.0, (8, 8))
            first_image = tf.equal(tf.range(16), 0)[:, None, None, None]
            image = tf.where(tf.equal(i, bad_batch) & first_image, np.nan, image)
            return {"view1": image, "view2": tf.image.flip_left_right(image),
                    "index": example["index"], "label": example["label"]}

        ds = data.read_examples(fashion_mnist.NAME, "train", data_dir).batch(16, True)
        return ds.repeat().enumerate().map(views)
    return fn


def test_non_finite_steps_stop_the_run_or_are_skipped(small_fashion_mnist, tmp_path, caplog):
    model_dir = tmp_path / "run"
    cfg = tiny_config(small_fashion_mnist, model_dir)
    with pytest.raises(FloatingPointError) as raised:
        lifecycle.pretrain(cfg, verbose=0, dataset_fn=nan_batches(small_fashion_mnist, 2))
    message = str(raised.value)
    for part in ("Non-finite projections, contrastive_loss", "at step 3",
                 f"The last good checkpoint is {model_dir / 'ckpt-2'}", "nonfinite_policy=skip"):
        assert part in message
    assert checkpoints.latest_checkpoint(str(model_dir)) == str(model_dir / "ckpt-2")
    assert not any(name.startswith(("ckpt-3", "ckpt-4")) for name in os.listdir(model_dir))
    table_before = tf.train.load_checkpoint(str(model_dir / "ckpt-2")).get_tensor(
        "model/loss_layer/u_table/log_u/.ATTRIBUTES/VARIABLE_VALUE")

    # Resumed with "skip": its first batch (step 3) is bad again, and is skipped.
    skip = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, nonfinite_policy="skip"))
    with caplog.at_level(logging.WARNING, logger="tf_sogclr.training.loop"):
        result = lifecycle.pretrain(skip, verbose=0, dataset_fn=nan_batches(small_fashion_mnist, 0))
    assert "Non-finite projections, contrastive_loss" in caplog.text and "at step 3" in caplog.text
    assert result.step == 4 and int(result.model.optimizer.iterations.numpy()) == 4
    assert result.logs["bad_steps"] == 1 and result.logs["nonfinite_steps"] == 1
    assert np.isfinite(result.logs["contrastive_loss"])
    for weight in result.model.weights:
        assert np.all(np.isfinite(weight.numpy())), weight.path
    table = result.model.loss_layer.u_table.log_u.numpy()
    np.testing.assert_array_equal(table[:16], table_before[:16])  # step 3: not written
    assert np.all(table[16:32] != table_before[16:32])  # step 4: written


# --------------------------------------------------------------------------- bad data


class RelTestImages(tfds.core.GeneratorBasedBuilder):
    """16 random 8x8 images per config, one of them (index 1) bad in the config's way."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file (see tf_sogclr.data.fashion_mnist)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in (
        "corrupt", "wrong_size", "rgb_with_gray", "unlabeled")]

    def _channels(self):
        return 1 if self.builder_config.name == "unlabeled" else 3

    def _info(self):
        features = {"image": tfds.features.Image(shape=(8, 8, self._channels()))}
        if self.builder_config.name != "unlabeled":
            features["label"] = tfds.features.ClassLabel(num_classes=2)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        name, rng = self.builder_config.name, np.random.RandomState(0)
        for i in range(16):
            image = rng.randint(0, 256, (8, 8, self._channels())).astype(np.uint8)
            if i == 1 and name == "corrupt":
                image = b"these bytes are no image"
            elif i == 1 and name == "rgb_with_gray":
                image = tf.io.encode_png(image[:, :, :1]).numpy()
            elif i == 1 and name == "wrong_size":
                image = tf.io.encode_png(image[:6, :6]).numpy()
            example = {"image": image}
            if name != "unlabeled":
                example["label"] = i % 2
            yield i, example


@pytest.fixture(scope="module")
def bad_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds_bad_data"))
    for builder_config in RelTestImages.BUILDER_CONFIGS:
        RelTestImages(data_dir=data_dir, config=builder_config.name).download_and_prepare()
    return data_dir


def image_batches(dataset, data_dir):
    return data.eval_dataset(dataset, "train", 16, 8, data_dir=data_dir)


def caption_batches(dataset, data_dir):
    """The bimodal reader (captions from the class names): the same checked decoder."""
    info = data.describe(dataset, "train", data_dir)
    captions.check_pairs(info)
    return captions.eval_pairs(info, 16, 8, data_dir=data_dir)


@pytest.mark.parametrize("reader", [image_batches, caption_batches], ids=["images", "captions"])
@pytest.mark.parametrize("name, message", [
    ("corrupt", r"\[is not a decodable image"),
    ("wrong_size", r"\[has an image of \(height, width\)\] \[6 6\] \[but the image feature of "
                   r"the dataset is \(8, 8\)\]"),
])
def test_bad_images_fail_at_their_batch_naming_dataset_split_example(bad_data_dir, name, message,
                                                                     reader):
    dataset = f"rel_test_images/{name}"
    batches = iter(reader(dataset, bad_data_dir))
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        next(batches)
    text = str(raised.value)
    assert f"dataset {dataset} split train: example" in text
    assert re.search(r"\[rel_test_images-train.tfrecord-00000-of-00001__\d+\]", text)
    assert re.search(message, text), text


def test_a_grayscale_image_in_an_rgb_dataset_is_read_as_rgb(bad_data_dir):
    images = [e["image"] for e in data.read_examples(
        "rel_test_images/rgb_with_gray", "train", bad_data_dir).as_numpy_iterator()]
    assert len(images) == 16 and all(image.shape == (8, 8, 3) for image in images)
    gray = [image for image in images if np.all(image == image[:, :, :1])]
    assert len(gray) == 1  # TFDS semantics (ImageNet holds a few grayscale JPEGs)


def test_undecodable_image_stops_pretraining_at_the_first_batch(bad_data_dir, tmp_path):
    cfg = tiny_config(bad_data_dir, tmp_path / "run", dataset="rel_test_images/corrupt")
    with pytest.raises(ValueError, match=r"dataset 'rel_test_images/corrupt' split 'train', "
                                         r"steps 1-1: .*is not a decodable image"):
        lifecycle.pretrain(cfg, verbose=0)
    assert checkpoints.latest_checkpoint(str(tmp_path / "run")) is None


def test_empty_splits_and_missing_labels_fail_before_anything_runs(
        small_fashion_mnist, bad_data_dir, tmp_path):
    model_dir = tmp_path / "run"
    empty = tiny_config(small_fashion_mnist, model_dir)
    empty = dataclasses.replace(empty, data=dataclasses.replace(empty.data,
                                                                 train_split="train[:0]"))
    with pytest.raises(ValueError, match=r"split 'train\[:0\]' of dataset 'fashion_mnist_debian'"
                                         r" is empty"):
        lifecycle.pretrain(empty, verbose=0)
    no_eval = dataclasses.replace(empty, data=dataclasses.replace(
        empty.data, train_split="train", eval_split="test[10:10]"))
    with pytest.raises(ValueError, match=r"split 'test\[10:10\]' .* is empty"):
        lifecycle.evaluate(no_eval)

    unlabeled = tiny_config(bad_data_dir, model_dir, dataset="rel_test_images/unlabeled",
                            eval_split="train", lineareval_while_pretraining=True)
    labels = r"needs labels, but dataset 'rel_test_images/unlabeled' \(split 'train'\)"
    with pytest.raises(ValueError, match="--lineareval_while_pretraining " + labels):
        lifecycle.pretrain(unlabeled, verbose=0)
    with pytest.raises(ValueError, match=labels):
        lifecycle.evaluate(unlabeled)
    with pytest.raises(ValueError, match="Fine-tuning " + labels):
        data.finetune_dataset("rel_test_images/unlabeled", "train", 4, 8, data_dir=bad_data_dir)
    assert not model_dir.exists()
    # Pretraining itself needs no labels: batches carry label -1.
    first = next(iter(data.pretrain_dataset(
        "rel_test_images/unlabeled", "train", 16, augment.SimCLRAugment(8, channels=1),
        data_dir=bad_data_dir, shuffle_buffer=16)))
    assert first["label"].numpy().tolist() == [-1] * 16


def test_checkpoints_of_other_data_are_refused_naming_dataset_and_split(
        small_fashion_mnist, tmp_path):
    cfg = tiny_config(small_fashion_mnist, tmp_path / "run")
    info = data.describe(fashion_mnist.NAME, "train", small_fashion_mnist)
    cases = [
        (dataclasses.replace(info, num_examples=64),
         r"holds a u-table of 64 rows, but dataset 'fashion_mnist_debian' split 'train' has "
         r"128 examples"),
        (dataclasses.replace(info, image_shape=(28, 28, 3)),
         r"trained on 3-channel \(RGB\) images, but dataset 'fashion_mnist_debian' split "
         r"'train' has 1-channel \(grayscale\) images"),
    ]
    for i, (other, message) in enumerate(cases):
        model_dir = tmp_path / f"other_{i}"
        checkpoints.checkpoint_manager(modalities.build_sogclr_model(cfg, other, 1), str(model_dir), 1).save(1)
        other_cfg = dataclasses.replace(cfg, run=dataclasses.replace(
            cfg.run, model_dir=str(model_dir)))
        with pytest.raises(ValueError, match=message):
            lifecycle.pretrain(other_cfg, verbose=0)
    with pytest.raises(ValueError, match=message):
        lifecycle.restore_model(other_cfg)


def test_an_index_outside_the_table_names_dataset_and_split(small_fashion_mnist):
    cfg = tiny_config(small_fashion_mnist, "unused")
    info = data.describe(fashion_mnist.NAME, "train", small_fashion_mnist)
    report = {"skipped": tf.constant(1.0), "first_bad_step": tf.constant(0),
              "index_out_of_range": tf.constant(1.0), "nonfinite_terms": tf.zeros([5])}
    with pytest.raises(ValueError, match=r"dataset 'fashion_mnist_debian' split 'train', step 7:"
                                         r" an example index lies outside the u-table \(128 rows"):
        training_loop.check_report(report, model_lib.NONFINITE_TERMS, cfg, info, 6, 8, 128)
    error = tf.errors.InvalidArgumentError(None, None, "assertion failed: [index must be in "
                                                       "[0, num_examples=128)] [[node x]]")
    assert "lies outside the u-table (128 rows)" in str(training_loop.data_error(error, info, 1, 2, 128))

"""Tests of tf_sogclr.data.captions: caption extraction, templates and pair batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_sogclr import data
from tf_sogclr.data import augment, captions
from tf_sogclr.models import text as text_lib


def test_fashion_mnist_pairs_have_stable_indices_and_template_captions(small_fashion_mnist):
    info = data.describe("fashion_mnist_debian", "train", small_fashion_mnist)
    captions.check_pairs(info)
    assert captions.templated(info) and info.num_examples == 128 and info.num_classes == 10
    vocabulary_source = captions.training_captions(info)
    assert len(vocabulary_source) == 10 * len(captions.TEMPLATES)
    tok = text_lib.TextTokenizer.from_texts(vocabulary_source, 64, 8)
    from tf_sogclr.data import augment

    augmenter = augment.SimCLRAugment(28, channels=1, color_distort=False)
    batch = next(iter(captions.pair_dataset(info, 32, tok, augmenter,
                                            data_dir=small_fashion_mnist, seed=3)))
    assert batch["image"].shape == (32, 28, 28, 1) and batch["tokens"].shape == (32, 8)
    index = batch["index"].numpy()
    assert len(set(index)) == 32 and index.min() >= 0 and index.max() < 128
    assert (batch["tokens"].numpy() > 1).sum(axis=1).min() >= 4  # no unknown words, no blanks
    test_info = data.describe("fashion_mnist_debian", "test", small_fashion_mnist)
    first = next(iter(captions.eval_pairs(test_info, 16, 28, data_dir=small_fashion_mnist)))
    np.testing.assert_array_equal(first["index"], np.arange(16))
    names = captions.FASHION_MNIST_CLASS_NAMES
    # Every image's captions are every template of its class: any of them is its own.
    expected = [[t.format(names[c]).encode() for t in captions.TEMPLATES]
                for c in first["label"].numpy()]
    # Dense [b, 8]: every image has as many captions (a caption dataset's batch is ragged).
    assert first["captions"].shape == (16, 8)
    assert first["captions"].numpy().tolist() == expected


class MockCaptions(tfds.core.GeneratorBasedBuilder):
    """A caption dataset like coco_captions: images of varying size, 0-3 captions each."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(10)}

    def _generate_examples(self, count):
        rng = np.random.default_rng(0)
        for i in range(count):
            size = int(rng.integers(10, 20))
            yield i, {"image": rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8),
                      "captions": [{"text": f"picture {i} number {j}"} for j in range(i % 4)]}


def test_caption_datasets_give_one_index_per_image(tmp_path):
    data_dir = str(tmp_path / "tfds")
    MockCaptions(data_dir=data_dir).download_and_prepare()
    info = data.describe("mock_captions", "train", data_dir)
    captions.check_pairs(info)
    assert captions.caption_feature(info) == "captions/text" and captions.class_names(info) is None
    tok = text_lib.TextTokenizer.from_texts(captions.training_captions(info, data_dir), 32, 4)
    assert {"picture", "number", "3"} <= set(tok.vocabulary)
    augmenter = augment.SimCLRAugment(8, channels=3, color_distort=False)
    # deterministic: else parallel maps may emit an element of the second epoch first.
    batch = next(iter(captions.pair_dataset(info, 10, tok, augmenter, data_dir=data_dir,
                                            seed=0, deterministic=True)))
    assert sorted(batch["index"].numpy()) == list(range(10))
    first = next(iter(captions.eval_pairs(info, 10, 8, data_dir=data_dir)))
    assert first["image"].shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(first["index"], np.arange(10))  # index order
    own = [[c.decode() for c in cs] for cs in first["captions"].to_list()]
    assert sorted(len(c) for c in own) == sorted(i % 4 for i in range(10))
    for i, tokens in zip(batch["index"].numpy(), batch["tokens"].numpy()):
        # Each image is paired with one of its own captions ("picture k number j"), or a
        # blank caption when it has none.
        if own[i]:
            assert tokens[1] == tok.vocabulary.index(own[i][0].split()[1])
        else:
            assert not tokens.any()


def test_bad_splits_templates_and_caption_less_datasets_are_refused(small_fashion_mnist):
    with pytest.raises(ValueError, match="split='validation' must be one split"):
        data.describe("fashion_mnist_debian", "validation", small_fashion_mnist)
    with pytest.raises(ValueError, match="hold one"):
        captions.check_pairs(data.describe("fashion_mnist_debian", "train", small_fashion_mnist),
                             templates=("no placeholder",))
    info = data.describe("fashion_mnist_debian", "train", small_fashion_mnist)
    unlabelled = dataclasses.replace(info, num_classes=None, label_names=None)
    with pytest.raises(ValueError, match="has neither captions .* nor a ClassLabel 'label'"):
        captions.check_pairs(unlabelled)
    with pytest.raises(ValueError, match="no class labels"):
        captions.class_prompts(unlabelled)
    captioned = dataclasses.replace(unlabelled, text_features=("captions/text",))
    captions.check_pairs(captioned)  # captions alone are enough
    assert captions.caption_feature(captioned) == "captions/text"


class OddCaptions(tfds.core.GeneratorBasedBuilder):
    """Four images with one caption each; one caption is odd, per builder config."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name)
                       for name in ("non_utf8", "blank", "long")]
    ODD = {"non_utf8": b"a caf\xe9 picture", "blank": b"  ",
           "long": " ".join(f"word{k}" for k in range(40)).encode()}
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(6, 6, 3)), "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            caption = self.ODD[self.builder_config.name] if i == 2 else f"picture {i}".encode()
            yield i, {"image": np.full((6, 6, 3), 10 * i, np.uint8), "caption": caption}


@pytest.mark.parametrize("odd,message", [("non_utf8", "has a caption that is not valid UTF-8"),
                                         ("blank", "has an empty or blank caption")])
def test_bad_captions_fail_naming_the_dataset_and_example(tmp_path, odd, message):
    from tf_sogclr import config
    from tf_sogclr.training import modalities

    data_dir = str(tmp_path / "tfds")
    name = f"odd_captions/{odd}"
    OddCaptions(config=odd, data_dir=data_dir).download_and_prepare()
    info = data.describe(name, "train", data_dir)
    assert captions.caption_feature(info) == "caption"
    cfg = config.BimodalConfig(data=config.DataConfig(dataset=name, data_dir=data_dir))
    example = r"odd_captions-train.tfrecord-00000-of-00001__\d"  # TFDS shuffles on writing
    # In the vocabulary pass, before training: a ValueError naming dataset, split and example.
    with pytest.raises(ValueError, match=(
            rf"dataset '{name}' split 'train': reading the training captions failed: .*"
            rf"example\] \[{example}\] \[{message}")):
        modalities.make_tokenizer(cfg, info)
    # In the training batches too (a tokenizer restored from a checkpoint skips that pass).
    tok = text_lib.TextTokenizer(32, 4, vocabulary=["picture", "0", "1", "3"])
    augmenter = augment.SimCLRAugment(6, channels=3, color_distort=False)
    batches = captions.pair_dataset(info, 4, tok, augmenter, data_dir=data_dir, seed=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{example}\] \[{message}"):
        next(iter(batches))


def test_captions_longer_than_max_text_length_are_truncated(tmp_path):
    data_dir = str(tmp_path / "tfds")
    OddCaptions(config="long", data_dir=data_dir).download_and_prepare()
    info = data.describe("odd_captions/long", "train", data_dir)
    tok = text_lib.TextTokenizer.from_texts(captions.training_captions(info, data_dir), 64, 8)
    augmenter = augment.SimCLRAugment(6, channels=3, color_distort=False)
    batch = next(iter(captions.pair_dataset(info, 4, tok, augmenter, data_dir=data_dir,
                                            seed=0, deterministic=True)))
    tokens = sorted(batch["tokens"].numpy().tolist())
    ids = {word: tok.vocabulary.index(word) for word in ("picture", "0", "1", "3")}
    # The 40-word caption keeps its first max_text_length = 8 words; the others are padded.
    assert tokens == sorted([[tok.vocabulary.index(f"word{k}") for k in range(8)]] + [
        [ids["picture"], ids[str(i)]] + [0] * 6 for i in (0, 1, 3)])

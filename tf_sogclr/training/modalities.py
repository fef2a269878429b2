"""What differs between unimodal (image-image) and bimodal (image-text) pretraining.

`training.lifecycle` runs one lifecycle (pretrain, restore, evaluate, export) for both; a
`Modality` supplies the few pieces that differ. The interface:

    describe(cfg, split)                          -> dataset info of the split
    check_against_data(cfg, info, strategy)       -> raises ValueError before anything runs
    build_model(cfg, info, strategy, vocabulary_checkpoint=None)
                                                  -> a compiled, built `ContrastiveModel`
    dataset_fn(cfg, info, model)                  -> fn(tf.distribute.InputContext) -> batches
    check_eval_data(cfg, eval_knn)                -> raises ValueError before restoring
    evaluate(cfg, model, eval_steps, **knn)       -> {score name: float}
    export_for_step(model, base_dir, step, image_shape, keep_max) -> export path

`get(name)` returns the registered modality of `config.MODALITIES`; a config names its own
(`cfg.modality`).
"""

import dataclasses

import tensorflow as tf

from tf_sogclr import checks, config, losses
from tf_sogclr import data as data_lib
from tf_sogclr.data import augment, captions, fashion_mnist, fashion_mnist_mosaics, offline
from tf_sogclr.evaluation import frozen_features, zero_shot
from tf_sogclr.export import dual_encoder as dual_encoder_export
from tf_sogclr.export import encoder as encoder_export
from tf_sogclr.models import dual_encoder, heads, resnet, sogclr_model, text
from tf_sogclr.training import checkpoints, loop, optim

_VOCABULARY_KEY_SUFFIX = "tokenizer/vocabulary_checkpoint/.ATTRIBUTES/vocabulary"


def _image_encoder(cfg, info, num_replicas, name):
    m = cfg.model
    return resnet.build_resnet(
        m.resnet_depth, width_multiplier=m.width_multiplier,
        small_image_stem=m.small_image_stem, global_bn=m.global_bn and num_replicas > 1,
        batch_norm_decay=m.batch_norm_decay,
        input_shape=(cfg.data.image_size, cfg.data.image_size, info.channels), name=name)


def _projection_head(cfg, num_replicas, name):
    m = cfg.model
    return heads.ProjectionHead(
        m.proj_head_mode, proj_out_dim=m.proj_out_dim, num_proj_layers=m.num_proj_layers,
        batch_norm_decay=m.batch_norm_decay, global_bn=m.global_bn and num_replicas > 1,
        name=name)


def _compile_and_build(model, cfg, info, exclude_from_weight_decay=None,
                       peak_learning_rates=None):
    """Compiles `model` with the run's optimiser and builds it and its optimiser slots
    (`exclude_from_weight_decay` None: the optimiser's own, `optim.weight_decay_excludes`)."""
    schedule = loop.make_schedule(cfg, info)
    model.compile(optimizer=optim.build_scheduled_optimizer(
        cfg.optimizer, cfg.run.train_batch_size, schedule.steps_per_epoch,
        schedule.total_steps, exclude_from_weight_decay=exclude_from_weight_decay,
        peak_learning_rates=peak_learning_rates))
    model.build((None, cfg.data.image_size, cfg.data.image_size, info.channels))
    model.optimizer.build(model.trainable_variables)
    return model


def check_batch_against_data(cfg, info, strategy):
    """Batch-size, replica and compilation checks that need the split and the strategy."""
    run = cfg.run
    replicas = strategy.num_replicas_in_sync
    data_lib.check_not_empty(info)
    if run.train_batch_size % replicas:
        raise ValueError(
            f"--train_batch_size={run.train_batch_size} must be divisible by the "
            f"{replicas} replicas in sync.")
    if run.train_batch_size > info.num_split_examples:
        raise ValueError(
            f"--train_batch_size={run.train_batch_size} is larger than split "
            f"{info.split!r} of {info.name} ({info.num_split_examples} examples).")
    if run.train_batch_size < 2 * replicas:
        raise ValueError(f"--train_batch_size must be >= {2 * replicas} (2 per replica): "
                         "a contrastive batch needs negatives.")
    loop.check_jit_compile(strategy, run.jit_compile)


class Modality:
    """The pieces of the lifecycle that differ between modalities (module docstring)."""

    name = None

    def describe(self, cfg, split):
        raise NotImplementedError

    def check_against_data(self, cfg, info, strategy):
        check_batch_against_data(cfg, info, strategy)

    def build_model(self, cfg, info, strategy, vocabulary_checkpoint=None):
        raise NotImplementedError

    def dataset_fn(self, cfg, info, model):
        raise NotImplementedError

    def check_eval_data(self, cfg, eval_knn):
        raise NotImplementedError

    def evaluate(self, cfg, model, eval_steps=0, eval_knn=True, knn_k=200,
                 knn_temperature=0.1):
        raise NotImplementedError

    def export_for_step(self, model, base_dir, step, image_shape, keep_max):
        raise NotImplementedError


def build_sogclr_model(cfg, info, num_replicas):
    """The unimodal SogCLR model for dataset `info`, compiled (call in strategy scope)."""
    lc = cfg.loss
    if lc.loss == "sogclr":
        loss_layer = losses.GlobalContrastiveLoss(
            info.num_examples, temperature=lc.temperature, gamma=lc.gamma,
            gamma_schedule=lc.gamma_schedule, gamma_decay_epochs=lc.gamma_decay_epochs,
            normalize=lc.hidden_norm, gradient_scale=lc.gradient_scale,
            individual_temperatures=lc.temperature_table_arguments(),
            temperature_rho=lc.rho_for("unimodal"),
            collective_free_backward=lc.collective_free_backward, name="sogclr_loss")
    else:
        loss_layer = losses.NTXentLoss(lc.temperature, normalize=lc.hidden_norm,
                                       collective_free_backward=lc.collective_free_backward,
                                       name="nt_xent_loss")
    model = sogclr_model.SogCLRModel(
        _image_encoder(cfg, info, num_replicas, "encoder"),
        _projection_head(cfg, num_replicas, "projection_head"), loss_layer,
        num_classes=info.num_classes if cfg.run.lineareval_while_pretraining else None,
        weight_decay=cfg.optimizer.weight_decay, name="sogclr_model")
    return _compile_and_build(model, cfg, info)


class Unimodal(Modality):
    """Image-image SogCLR / SimCLR with a linear head trained alongside; k-NN evaluation."""

    name = "unimodal"

    def describe(self, cfg, split):
        return data_lib.describe(cfg.data.dataset, split, cfg.data.data_dir)

    def check_against_data(self, cfg, info, strategy):
        super().check_against_data(cfg, info, strategy)
        if cfg.run.lineareval_while_pretraining:
            data_lib.check_labels(info, "--lineareval_while_pretraining")

    def build_model(self, cfg, info, strategy, vocabulary_checkpoint=None):
        with strategy.scope():
            return build_sogclr_model(cfg, info, strategy.num_replicas_in_sync)

    def dataset_fn(self, cfg, info, model):
        augmenter = augment.SimCLRAugment(
            cfg.data.image_size, channels=info.channels, crop_area_min=cfg.data.crop_area_min,
            color_jitter_strength=cfg.data.color_jitter_strength, use_blur=cfg.data.use_blur,
            flip=cfg.data.random_flip)

        def fn(context):
            return data_lib.pretrain_dataset(
                cfg.data.dataset, cfg.data.train_split, cfg.run.train_batch_size, augmenter,
                data_dir=cfg.data.data_dir, shuffle_buffer=cfg.data.shuffle_buffer,
                cache=cfg.data.cache_dataset, seed=cfg.run.seed, channels=info.channels,
                input_context=context)

        return fn

    def probe_split(self, cfg):
        """The frozen-feature evaluation's probe set: --probe_split, or the first
        `config.PROBE_EXAMPLES` examples of the training split's base split."""
        if cfg.data.probe_split:
            return cfg.data.probe_split
        info = self.describe(cfg, cfg.data.train_split)
        return f"{info.base_split}[:{min(config.PROBE_EXAMPLES, info.num_examples)}]"

    def check_eval_data(self, cfg, eval_knn):
        splits = (cfg.data.eval_split,) + ((self.probe_split(cfg),) if eval_knn else ())
        for split in splits:
            info = self.describe(cfg, split)
            data_lib.check_not_empty(info)
            data_lib.check_labels(info, "Evaluation (linear head, k-NN, linear probe)")

    def evaluate(self, cfg, model, eval_steps=0, eval_knn=True, knn_k=200,
                 knn_temperature=0.1):
        """Scores on the eval split: the linear head's top-1 / top-5 (when pretraining trained
        one) and, with `eval_knn`, the frozen encoder's k-NN and linear-probe top-1 against
        `probe_split(cfg)`, beside the same two scores of raw pixels
        (`frozen_features.evaluate`; "raw_pixels_" keys)."""
        eval_info = self.describe(cfg, cfg.data.eval_split)

        def eval_batches(split):
            dataset = data_lib.eval_dataset(
                cfg.data.dataset, split, cfg.run.eval_batch_size, cfg.data.image_size,
                data_dir=cfg.data.data_dir, cache=cfg.data.cache_dataset,
                channels=eval_info.channels)
            return dataset.take(eval_steps) if eval_steps else dataset

        results = {}
        if model.linear_head is not None:
            scores = model.evaluate(eval_batches(cfg.data.eval_split), return_dict=True,
                                    verbose=0)
            results.update(linear_top1=scores["linear_top1"],
                           linear_top5=scores["linear_top5"], linear_loss=scores["linear_loss"])
        if eval_knn:
            for prefix, encoder in (("", model.encoder),
                                    ("raw_pixels_", frozen_features.raw_pixels)):
                scores = frozen_features.evaluate(
                    encoder, eval_batches(self.probe_split(cfg)),
                    eval_batches(cfg.data.eval_split), eval_info.num_classes, knn_k=knn_k,
                    knn_temperature=knn_temperature)
                results.update({prefix + name: value for name, value in scores.items()})
        return {k: float(v) for k, v in results.items()}

    def export_for_step(self, model, base_dir, step, image_shape, keep_max):
        return encoder_export.export_for_step(model, base_dir, step, image_shape,
                                              keep_max=keep_max)


def build_bimodal_loss(loss, num_examples, temperature=config.BIMODAL_TEMPERATURE, gamma=0.9,
                       gamma_schedule="constant", gamma_decay_epochs=None, normalize=True,
                       gradient_scale="infonce", individual_temperatures=None,
                       temperature_rho=config.TEMPERATURE_RHO["bimodal"],
                       collective_free_backward=False):
    """"sogclr": `BimodalGlobalContrastiveLoss` with `num_examples` rows; "simclr": CLIP's."""
    checks.choice("--loss", loss, config.LOSSES)
    if loss == "sogclr":
        return losses.BimodalGlobalContrastiveLoss(
            num_examples, temperature=temperature, gamma=gamma, gamma_schedule=gamma_schedule,
            gamma_decay_epochs=gamma_decay_epochs, normalize=normalize,
            gradient_scale=gradient_scale, individual_temperatures=individual_temperatures,
            temperature_rho=temperature_rho, collective_free_backward=collective_free_backward,
            name="sogclr_loss")
    return losses.ClipContrastiveLoss(temperature, normalize=normalize,
                                      collective_free_backward=collective_free_backward,
                                      name="clip_loss")


def build_dual_encoder(cfg, info, tokenizer, num_replicas=1):
    """The compiled, built `DualEncoderModel` of `cfg` for dataset `info` (call in scope)."""
    t, lc = cfg.text, cfg.loss
    text_encoder = text.TextEncoder(
        t.vocab_size, t.max_text_length, kind=t.text_encoder, width=t.text_width,
        num_layers=t.text_layers, num_heads=t.text_heads, name="text_encoder")
    loss_layer = build_bimodal_loss(lc.loss, info.num_examples, lc.temperature, lc.gamma,
                                    lc.gamma_schedule, lc.gamma_decay_epochs, lc.hidden_norm,
                                    lc.gradient_scale, lc.temperature_table_arguments(),
                                    lc.rho_for("bimodal"), lc.collective_free_backward)
    model = dual_encoder.DualEncoderModel(
        _image_encoder(cfg, info, num_replicas, "image_encoder"), text_encoder,
        _projection_head(cfg, num_replicas, "image_projection_head"),
        _projection_head(cfg, num_replicas, "text_projection_head"), loss_layer,
        tokenizer=tokenizer, learnable_temperature=t.learnable_temperature,
        temperature_rho=lc.rho_for("bimodal"),
        temperature_range=(lc.temperature_min, lc.temperature_max),
        temperature_objective=t.temperature_objective,
        weight_decay=cfg.optimizer.weight_decay, name="dual_encoder")
    own_rate = t.learnable_temperature_learning_rate
    return _compile_and_build(
        model, cfg, info,
        optim.weight_decay_excludes(cfg.optimizer.optimizer, dual_encoder.NO_DECAY_PATTERNS),
        peak_learning_rates=(None if own_rate is None
                             else {dual_encoder.TEMPERATURE_PATTERN: own_rate}))


def vocabulary_from_checkpoint(path):
    """The tokenizer vocabulary stored in checkpoint `path` (list of str), or None."""
    reader = tf.train.load_checkpoint(path)
    keys = [k for k in reader.get_variable_to_shape_map() if k.endswith(_VOCABULARY_KEY_SUFFIX)]
    if not keys:
        return None
    return [v.decode("utf-8") for v in reader.get_tensor(keys[0])]


def make_tokenizer(cfg, info, checkpoint=None):
    """The tokenizer of a run: the vocabulary of `checkpoint` if given, else built from the
    training captions of `info` (the `vocab_size - 2` most frequent tokens)."""
    vocabulary = vocabulary_from_checkpoint(checkpoint) if checkpoint else None
    if vocabulary is not None:
        return text.TextTokenizer(cfg.text.vocab_size, cfg.text.max_text_length,
                                  vocabulary=vocabulary, name="tokenizer")
    try:
        return text.TextTokenizer.from_texts(
            captions.training_captions(info, cfg.data.data_dir), cfg.text.vocab_size,
            cfg.text.max_text_length, name="tokenizer")
    except tf.errors.InvalidArgumentError as error:  # captions.checked_captions
        raise ValueError(f"dataset {info.name!r} split {info.split!r}: reading the training "
                         f"captions failed: {checkpoints.first_line(error)}") from error


class Bimodal(Modality):
    """Image-text SogCLR / CLIP on caption pairs; zero-shot and recall evaluation."""

    name = "bimodal"

    def describe(self, cfg, split):
        info = data_lib.describe(cfg.data.dataset, split, cfg.data.data_dir)
        captions.check_pairs(info)
        return info

    def check_against_data(self, cfg, info, strategy):
        run = dataclasses.replace(cfg.run, lineareval_while_pretraining=False)
        super().check_against_data(dataclasses.replace(cfg, run=run), info, strategy)
        if cfg.data.random_flip and offline.captions_name_sides(info.name):
            raise ValueError(
                f"--random_flip=true mirrors the images of {info.name}, whose captions name "
                "left and right; pass --random_flip=false.")

    def build_model(self, cfg, info, strategy, vocabulary_checkpoint=None):
        """The dual encoder; its tokenizer takes `vocabulary_checkpoint`'s vocabulary (a run
        resuming, or a checkpoint restored), else the training captions'."""
        tokenizer = make_tokenizer(cfg, info, vocabulary_checkpoint)
        with strategy.scope():
            return build_dual_encoder(cfg, info, tokenizer, strategy.num_replicas_in_sync)

    def dataset_fn(self, cfg, info, model):
        augmenter = augment.SimCLRAugment(
            cfg.data.image_size, channels=info.channels, crop_area_min=cfg.data.crop_area_min,
            flip=cfg.data.random_flip, color_distort=False)

        def fn(context):
            return captions.pair_dataset(
                info, cfg.run.train_batch_size, model.tokenizer, augmenter,
                data_dir=cfg.data.data_dir, shuffle_buffer=cfg.data.shuffle_buffer,
                cache=cfg.data.cache_dataset, seed=cfg.run.seed, input_context=context)

        return fn

    def check_eval_data(self, cfg, eval_knn):
        data_lib.check_not_empty(self.describe(cfg, cfg.data.eval_split))

    def evaluate(self, cfg, model, eval_steps=0, eval_knn=True, knn_k=200,
                 knn_temperature=0.1):
        """Zero-shot top-1 (labelled datasets) and recall@1/5/10 both ways on the eval split;
        on fashion_mnist_mosaics also zero-shot on single items (`item_zero_shot_top1`).
        `eval_knn` and the k-NN settings concern unimodal runs."""
        del eval_knn, knn_k, knn_temperature
        info = self.describe(cfg, cfg.data.eval_split)
        dataset = captions.eval_pairs(info, cfg.run.eval_batch_size, cfg.data.image_size,
                                      data_dir=cfg.data.data_dir)
        encode_image = tf.function(model.encode_image, reduce_retracing=True)
        encode_text = tf.function(model.encode_text, reduce_retracing=True)
        prompts = captions.class_prompts(info) if info.label_names is not None else None
        results = zero_shot.evaluate_dual_encoder(encode_image, encode_text, dataset, prompts,
                                                  eval_steps)
        if offline.base_name(cfg.data.dataset) == fashion_mnist_mosaics.NAME:
            results["item_zero_shot_top1"] = self.item_zero_shot_top1(
                cfg, encode_image, encode_text, eval_steps)
        return results

    @staticmethod
    def item_zero_shot_top1(cfg, encode_image, encode_text, eval_steps=0):
        """Zero-shot top-1 of a mosaics model on Fashion-MNIST's test items, each tiled into
        a mosaic of four (`fashion_mnist_mosaics.tile`, `item_prompts`)."""
        items = data_lib.eval_dataset(
            fashion_mnist.NAME, "test", cfg.run.eval_batch_size, fashion_mnist_mosaics.ITEM_SIZE,
            data_dir=cfg.data.data_dir).map(lambda b: {
                "image": augment.preprocess_for_eval(fashion_mnist_mosaics.tile(b["image"]),
                                                     cfg.data.image_size),
                "label": b["label"]})
        return zero_shot.labelled_zero_shot_top1(encode_image, encode_text, items,
                                                 fashion_mnist_mosaics.item_prompts(),
                                                 eval_steps)

    def export_for_step(self, model, base_dir, step, image_shape, keep_max):
        return dual_encoder_export.export_dual_encoder_for_step(model, base_dir, step,
                                                                image_shape, keep_max=keep_max)


REGISTRY = {modality.name: modality for modality in (Unimodal(), Bimodal())}


def get(name):
    """The registered modality `name` ("unimodal" or "bimodal")."""
    checks.choice("--modality", name, config.MODALITIES)
    return REGISTRY[name]

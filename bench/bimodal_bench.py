"""Bimodal (image-text) SogCLR speed and zero-shot quality: one JSON object per line.

    python bench/bimodal_bench.py [--steps 30 --batch 128]
    python bench/bimodal_bench.py --zero_shot [--zero_shot_steps 600 --data_dir DIR]

Default mode, each measurement in a fresh subprocess:

* `bimodal_train_examples_per_s` (loss=sogclr; loss=simclr, i.e. CLIP's InfoNCE): dual-encoder
  train steps through `training_loop.train_loop_function` on in-memory 28x28x1 images and 16-token
  captions, with run.py's bimodal model (ResNet-18 of width 0.125, 2-block Transformer text
  encoder of width 128, projection heads to 128, tau 0.03);
* `bimodal_sogclr_over_clip_throughput`: their ratio, same run.

`--zero_shot`: `run.py --modality=bimodal` with its offline defaults (Fashion-MNIST with
template captions, LARS, tau 0.03) at `--train_batch_size=64` for `--zero_shot_steps`
steps with each of `--losses` (SogCLR, CLIP's InfoNCE, SogCLR with individual temperatures)
and `--seeds`, then evaluation on the 10000 test images: `bimodal_zero_shot_top1` (and
recall@k both ways, the temperatures' statistics, wall time) per run. The load
average is printed with every line: the machine may be shared.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)


def _load():
    return round(os.getloadavg()[0], 2)


def case_train(args):
    """Examples/s of the bimodal train step with `args.loss` on random in-memory batches."""
    import tensorflow as tf
    from tf_sogclr import config
    from tf_sogclr import data
    from tf_sogclr.data import captions
    from tf_sogclr.models import text
    from tf_sogclr.training import loop as training_loop
    from tf_sogclr.training import modalities

    cfg = config.BimodalConfig(
        model=config.ModelConfig(width_multiplier=args.width),
        loss=config.LossConfig(loss=args.loss, temperature=config.BIMODAL_TEMPERATURE),
        run=config.RunConfig(train_batch_size=args.batch, train_steps=1000,
                             lineareval_while_pretraining=False)).validate()
    info = data.DatasetInfo(
        name="bench", full_name="bench/1.0.0", split="train", base_split="train",
        num_examples=60_000, num_split_examples=60_000, num_classes=10,
        image_shape=(28, 28, 1), shard_lengths=(60_000,),
        label_names=captions.FASHION_MNIST_CLASS_NAMES)
    tokenizer = text.TextTokenizer.from_texts(
        [p for ps in captions.class_prompts(info) for p in ps], cfg.text.vocab_size,
        cfg.text.max_text_length)
    model = modalities.build_dual_encoder(cfg, info, tokenizer)
    gen = tf.random.Generator.from_seed(0)
    prompts = [p for ps in captions.class_prompts(info) for p in ps]
    batch = {"image": gen.uniform((args.batch, 28, 28, 1)),
             "tokens": tokenizer(tf.constant([prompts[i % len(prompts)]
                                              for i in range(args.batch)])),
             "index": tf.range(args.batch, dtype=tf.int32)}
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    loop = training_loop.train_loop_function(model, tf.distribute.get_strategy())
    n = tf.constant(args.steps_per_execution, tf.int32)
    loop(iterator, n)  # trace and warm up
    loop(iterator, n)
    start, done = time.perf_counter(), 0
    while done < args.steps:
        logs = loop(iterator, n)
        done += args.steps_per_execution
    float(logs["contrastive_loss"])
    seconds = time.perf_counter() - start
    return {"examples_per_s": done * args.batch / seconds, "seconds_per_step": seconds / done}


CASES = {"train": case_train}


def _sub(args, case, **overrides):
    options = dict(vars(args), case=case, **overrides)
    command = [sys.executable, os.path.abspath(__file__)]
    for key, value in options.items():
        if value is None or value is False:
            continue
        command.append(f"--{key}" if value is True else f"--{key}={value}")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --losses names: run.py's --loss, and SogCLR with iSogCLR's individual temperatures.
ZERO_SHOT_LOSSES = {"sogclr": ["--loss=sogclr"], "simclr": ["--loss=simclr"],
                    "sogclr_individual": ["--loss=sogclr", "--individual_temperatures",
                                          "--nolearnable_temperature"]}


def zero_shot(args, loss, seed=0):
    """Trains and evaluates run.py's offline bimodal default with `loss` (a ZERO_SHOT_LOSSES
    name) and `seed`; returns its summary."""
    model_dir = tempfile.mkdtemp(prefix=f"bimodal_bench_{loss}_")
    command = [sys.executable, os.path.join(REPO, "run.py"), "--modality=bimodal",
               *ZERO_SHOT_LOSSES[loss], "--train_batch_size=64",
               f"--train_steps={args.zero_shot_steps}", "--checkpoint_steps=0",
               "--checkpoint_epochs=0", f"--model_dir={model_dir}", "--steps_per_execution=10",
               f"--seed={seed}", *args.extra.split()]
    if args.data_dir:
        command.append(f"--data_dir={args.data_dir}")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    summary = json.loads(done.stdout[done.stdout.index("Summary:") + len("Summary:"):])
    summary["seconds"] = time.perf_counter() - start
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--steps_per_execution", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=2, help="runs per loss (best is kept)")
    parser.add_argument("--zero_shot", action="store_true",
                        help="train run.py's bimodal default at batch 64 with each loss")
    parser.add_argument("--zero_shot_steps", type=int, default=600)
    parser.add_argument("--losses", default="sogclr,simclr",
                        help=f"--zero_shot: comma-separated of {','.join(ZERO_SHOT_LOSSES)}")
    parser.add_argument("--seeds", default="0", help="--zero_shot: comma-separated seeds")
    parser.add_argument("--extra", default="",
                        help="--zero_shot: run.py flags added to every run, space-separated "
                             "(e.g. --train_split=train[:6400], so that 300 steps make 3 "
                             "epochs and individual temperatures are used again)")
    parser.add_argument("--data_dir", default=None, help="TFDS dir (default: TFDS's)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="sogclr", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case](args)))
        return
    if args.zero_shot:
        losses = [loss for loss in args.losses.split(",") if loss]
        unknown = sorted(set(losses) - set(ZERO_SHOT_LOSSES))
        if unknown:
            parser.error(f"--losses: unknown {unknown}; choose from {sorted(ZERO_SHOT_LOSSES)}")
        for seed in (int(s) for s in args.seeds.split(",") if s):
            for loss in losses:
                summary = zero_shot(args, loss, seed)
                scores, train = summary["eval"], summary["train"]
                print(json.dumps({
                    "name": "bimodal_zero_shot_top1", "loss": "clip" if loss == "simclr" else loss,
                    "seed": seed, "value": scores["zero_shot_top1"],
                    **{k: v for k, v in scores.items() if "_recall@" in k},
                    **{k: v for k, v in train.items() if k.startswith("temperature")},
                    "train_steps": summary["step"], "batch": 64,
                    "seconds": round(summary["seconds"], 1), "load_average": _load()}),
                    flush=True)
        return

    common = {"batch": args.batch, "width": args.width, "depth": 18, "image": "28x28x1",
              "text": "transformer 128x2, 16 tokens"}
    # Alternated repeats, best of each: the machine may be shared, and load comes and goes.
    runs = {"sogclr": [], "simclr": []}
    for _ in range(args.repeats):
        for loss in runs:
            runs[loss].append(_sub(args, "train", loss=loss))
    sogclr, clip = (max(runs[loss], key=lambda r: r["examples_per_s"]) for loss in runs)
    for loss, result in (("sogclr", sogclr), ("clip", clip)):
        print(json.dumps({"name": "bimodal_train_examples_per_s", "loss": loss,
                          "value": result["examples_per_s"], "repeats": args.repeats, **common,
                          "load_average": _load()}))
    print(json.dumps({"name": "bimodal_sogclr_over_clip_throughput",
                      "value": sogclr["examples_per_s"] / clip["examples_per_s"], **common,
                      "load_average": _load()}))


if __name__ == "__main__":
    main()

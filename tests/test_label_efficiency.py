"""bench/label_efficiency.py: --quick end to end on the 128-example slice, resume, subsets, table."""

import functools
import json
import os

import pytest

from bench_scripts import PNG_MAGIC, module_fixture, read_jsonl, run_script, succeeded

# --quick, shrunk to the fixture's 128 examples per split and to one fraction (64 labels; the
# suite's time budget): the other fractions take the same path (see the unit tests below).
QUICK = ["--quick", "--pretrain_split=train", "--pretrain_batch_size=64", "--probe_split=train",
         "--label_examples=128", "--test_split=test", "--fractions", "50"]


study = functools.partial(run_script, "label_efficiency")
module = module_fixture("label_efficiency")


def test_quick_study_writes_records_table_plot_and_resumes(small_fashion_mnist, tmp_path):
    results = tmp_path / "results"
    args = [f"--results_dir={results}", f"--data_dir={small_fashion_mnist}", *QUICK]
    succeeded(study(*args))

    records = read_jsonl(results / "runs.jsonl")
    pretrained = {r["source"]: r for r in records if r["kind"] == "pretrain"}
    assert sorted(pretrained) == ["simclr", "sogclr"]
    for r in pretrained.values():
        assert r["step"] == 2 and os.path.isfile(os.path.join(r["export"], "saved_model.pb"))
        for key in ("knn_top1", "linear_probe_top1", "raw_pixels_linear_probe_top1"):
            assert 0.0 <= r[key] <= 1.0, key
    cells = [r for r in records if r["kind"] == "cell"]
    assert sorted((r["source"], r["fraction"], r["split"]) for r in cells) == sorted(
        (source, fraction, split) for source in ("sogclr", "simclr", "scratch", "raw_pixels")
        for fraction, split in ((50.0, "train[0:64]"),))
    for r in cells:
        assert 0.0 <= r["test_top1"] <= 1.0 and r["wall_s"] > 0 and r["cpu_s"] > 0
        assert r["config_id"] == records[0]["config_id"] and r["seed"] == 0
        if r["source"] != "raw_pixels":
            # 20 steps: 64 labels at batch 16 (4 steps an epoch) for 5 epochs.
            assert (r["batch_size"], r["epochs"]) == (16, 5)
            assert os.path.isdir(results / "finetune" / f"{r['source']}_{r['fraction']:g}pct_s0")
    table = (results / "results.md").read_text()
    for row in ("| source | 50% (64 labels) |", "| SogCLR, fine-tuned | ",
                "| raw-pixel linear (floor) | ", "| SimCLR − scratch (points) | ",
                "| sogclr | 2 |"):
        assert row in table, row
    assert (results / "label_efficiency.png").read_bytes()[:8] == PNG_MAGIC

    # Re-running skips what is recorded; a cell missing from the file runs again.
    kept = [r for r in records if (r["source"], r.get("fraction")) != ("raw_pixels", 50.0)]
    with open(results / "runs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    again = succeeded(study(*args))
    assert "1 cells to go" in again.stdout and "raw_pixels_50pct_s0" in again.stdout
    assert "pretrained" not in again.stdout
    after = read_jsonl(results / "runs.jsonl")
    assert after[:-1] == kept and after[-1]["split"] == "train[0:64]"


def test_bad_plans_fail_before_training_naming_the_flag(module, small_fashion_mnist,
                                                      tmp_path):
    results = tmp_path / "results"
    base = [f"--results_dir={results}", f"--data_dir={small_fashion_mnist}", *QUICK[:-2]]
    for extra, message in (
            (["--fractions", "50", "--seeds", "0", "1", "2"], "--seeds / --fractions: seed 2"),
            (["--fractions", "0"], "--fractions: percentages in (0, 100]"),
            (["--seeds", "-1"], "--seeds: integers >= 0"),
            (["--label_split=train[:64]"], "--label_split: a split name without slicing"),
            (["--label_examples=1000"], "--label_examples: in [1, 128]")):
        with pytest.raises(SystemExit) as failed:
            module.main([*base, *extra])
        assert message in str(failed.value), (extra, failed.value)
    assert not results.exists()


def test_subsets_are_disjoint_and_stable_and_schedules_keep_the_step_budget(module):
    splits = [module.subset_split(module.Study(), 60_000, 10, s) for s in range(3)]
    assert splits == ["train[0:6000]", "train[6000:12000]", "train[12000:18000]"]
    assert module.subset_split(module.Study(), 60_000, 1, 2) == "train[1200:1800]"
    assert module.subset_split(module.Study(), 2000, 100, 0) == "train[0:2000]"
    assert module.finetune_schedule(600, 500) == (64, 56)
    assert module.finetune_schedule(6000, 500) == (256, 22)
    assert module.finetune_schedule(60_000, 500) == (256, 2)
    assert module.finetune_schedule(600, 300) == (64, 33)  # the study's default budget
    assert module.finetune_schedule(6000, 300) == (256, 13)
    assert module.finetune_schedule(60_000, 300) == (256, 1)
    assert module.finetune_schedule(10, 20) == (10, 20)  # fewer labels than the smallest batch
    cells = module.cells([1, 10, 100], [0, 1, 2])
    assert len(cells) == 4 * (3 + 3 + 1) and len(set(cells)) == len(cells)
    assert {c.seed for c in cells if c.fraction == 100} == {0}
    assert module.Cell("sogclr", 10.0, 2).name == "sogclr_10pct_s2"


def test_table_reports_mean_spread_and_the_gain_over_scratch(module, tmp_path):
    study_cfg = module.Study(finetune_steps=100)
    cid = study_cfg.config_id()

    def cell(source, fraction, seed, top1, config_id=cid):
        return {"kind": "cell", "source": source, "fraction": fraction, "seed": seed,
                "num_labels": int(600 * fraction), "test_top1": top1, "wall_s": 1.0,
                "config_id": config_id}

    records = [cell("sogclr", 1.0, s, v) for s, v in enumerate((0.70, 0.72, 0.74))]
    records += [cell("scratch", 1.0, s, v) for s, v in enumerate((0.60, 0.62, 0.64))]
    records += [cell("raw_pixels", 1.0, 0, 0.65), cell("sogclr", 1.0, 9, 0.1, config_id="x")]
    records.append({"kind": "pretrain", "source": "sogclr", "step": 468, "config_id": cid,
                    "pretrain_wall_s": 240.0, "cpu_s_per_example": 0.005, "knn_top1": 0.76,
                    "linear_probe_top1": 0.8, "raw_pixels_knn_top1": 0.79,
                    "raw_pixels_linear_probe_top1": 0.813})
    assert module.Study(finetune_steps=200).config_id() != cid
    path = str(tmp_path / "t.md")
    module.write_table(path, records, study_cfg, "python bench/label_efficiency.py", "abc")
    table = open(path).read()
    assert "| SogCLR, fine-tuned | 72.0 ± 2.0 (n=3) |" in table
    assert "| from scratch (no pretraining) | 62.0 ± 2.0 (n=3) |" in table
    assert "| raw-pixel linear (floor) | 65.0 (n=1) |" in table
    assert "| SogCLR − scratch (points) | +10.0 |" in table
    assert "| SimCLR, fine-tuned | — |" in table
    assert "| sogclr | 468 | 4.0 min | 0.0050 | 76.0 | 80.0 | 79.0 / 81.3 |" in table
    module.write_plot(str(tmp_path / "p.png"), records, study_cfg)
    assert open(tmp_path / "p.png", "rb").read(8) == PNG_MAGIC

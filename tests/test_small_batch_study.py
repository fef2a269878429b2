"""bench/small_batch_study.py: --quick end to end on the 128-example slice, resume, plan, table."""

import functools
import json

from bench_scripts import PNG_MAGIC, module_fixture, read_jsonl, run_script, succeeded

# --quick, shrunk to the fixture's 128 examples per split.
QUICK = ["--quick", "--train_subset=128", "--test_subset=128"]


study = functools.partial(run_script, "small_batch_study")
module = module_fixture("small_batch_study")


def test_quick_study_writes_records_table_plot_and_resumes(small_fashion_mnist, tmp_path):
    results = tmp_path / "results"
    args = [f"--results_dir={results}", f"--data_dir={small_fashion_mnist}", *QUICK]
    succeeded(study(*args))

    records = read_jsonl(results / "runs.jsonl")
    assert sorted((r["method"], r["batch_size"], r["seed"]) for r in records) == [
        ("random", 0, 0), ("raw_pixels", 0, 0), ("simclr", 32, 0), ("simclr", 64, 0),
        ("sogclr", 32, 0), ("sogclr", 64, 0), ("supervised", 128, 0)]
    for r in records:
        for key in ("linear_top1", "knn_top1", "linear_train_top1"):
            assert 0.0 <= r[key] <= 1.0, (r["method"], key)
        assert r["wall_s"] > 0 and r["eval_s"] > 0
        assert r["workers"] == 2  # the default: two runs side by side
        if r["method"] in ("random", "raw_pixels"):
            assert r["epochs"] == 0 and r["steps"] == 0 and r["examples_per_s"] is None
        else:
            assert r["epochs"] == 1 and r["examples_per_s"] > 0
            assert r["steps"] == 128 // r["batch_size"]
        if r["method"] in ("simclr", "sogclr"):
            assert r["final_logs"]["bad_steps"] == 0
            assert r["config"]["temperature"] == 0.1 and r["config"]["train_subset"] == 128
        assert ("gamma" in r["config"]) == (r["method"] == "sogclr")
    assert 0.0 <= next(r for r in records if r["method"] == "supervised")["head_top1"] <= 1.0
    # Checkpoints are dropped, TensorBoard scalars kept.
    run_dir = results / "runs" / "sogclr_b32_s0"
    assert (run_dir / "train").is_dir() and not list(run_dir.glob("ckpt-*"))

    table = (results / "results.md").read_text()
    for row in ("| simclr | 32 | 1 |", "| sogclr | 64 | 1 |", "| random (reference) | — | 1 |",
                "| raw_pixels (reference) | — | 1 |",
                "| supervised (reference) | 128 | 1 |", "Δ linear"):
        assert row in table, row
    assert (results / "small_batch.png").read_bytes()[:8] == PNG_MAGIC

    # Re-running skips finished runs; a run missing from the file (here: dropped) runs again.
    kept = [r for r in records if r["method"] != "random"]
    with open(results / "runs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    again = succeeded(study(*args))
    assert "7 runs, 6 already in" in again.stdout and "1 to go" in again.stdout
    assert "random_b0_s0" in again.stdout and "sogclr_b32_s0" not in again.stdout
    after = read_jsonl(results / "runs.jsonl")
    assert after[:6] == kept and after[6]["method"] == "random" and len(after) == 7


def test_plan_fits_the_budget_and_writes_nothing(module, tmp_path):
    results = tmp_path / "results"
    done = succeeded(study(f"--results_dir={results}", "--plan", timeout=120))
    assert "Runs (31, 0 already done)" in done.stdout
    for name in ("simclr_b16_s2", "sogclr_b16_s1", "simclr_b32_s0", "sogclr_b64_s2",
                 "sogclr_b512_s2", "supervised_b128_s2", "random_b0_s2", "raw_pixels_b0_s0"):
        assert name in done.stdout
    assert "simclr_b32_s1" not in done.stdout  # one seed away from 16, 64 and 512
    whole = float(done.stdout.split("whole study ")[1].split(" min")[0])
    assert whole <= (1 - module.MARGIN) * module.BUDGET_S / 60 and module.BUDGET_S == 90 * 60
    assert not results.exists()


def test_run_list_order_and_seeds(module):
    runs = module.run_list([32, 64, 512], [0, 1, 2], [64, 512], module.METHODS)
    names = [r.name for r in runs]
    assert names[:4] == ["raw_pixels_b0_s0", "random_b0_s0", "random_b0_s1", "random_b0_s2"]
    assert names[4:10] == ["simclr_b32_s0", "sogclr_b32_s0", "simclr_b64_s0", "sogclr_b64_s0",
                           "simclr_b512_s0", "sogclr_b512_s0"]
    assert names[10] == "supervised_b128_s0"
    assert sum(r.method == "simclr" and r.batch_size == 512 for r in runs) == 3
    assert sum(r.batch_size == 32 for r in runs) == 2
    assert len(set(names)) == len(names) == 1 + 3 + 6 + 1 + 8 + 2
    only = module.run_list([64], [0], [], ["sogclr"])
    assert [r.name for r in only] == ["sogclr_b64_s0"]


def test_table_and_plot_summarise_seeds_of_the_current_configuration(module, tmp_path):
    study_cfg = module.Study(train_subset=1000, epochs=2)

    def record(method, batch, seed, linear, knn, cfg=study_cfg):
        return {"method": method, "batch_size": batch, "seed": seed, "epochs": 2,
                "linear_top1": linear, "knn_top1": knn, "wall_s": 10.0,
                "examples_per_s": None if method == "random" else 100.0,
                "config_id": cfg.config_id(method)}

    other = module.Study(train_subset=1000, epochs=2, gamma=0.5)
    records = [record("sogclr", 64, s, v, v - 0.1) for s, v in enumerate((0.70, 0.72, 0.74))]
    records += [record("simclr", 64, 0, 0.65, 0.60), record("random", 0, 0, 0.30, 0.25),
                record("raw_pixels", 0, 0, 0.68, 0.63), record("simclr", 512, 0, 0.70, 0.61),
                record("sogclr", 64, 9, 0.10, 0.10, cfg=other)]
    assert study_cfg.config_id("simclr") == other.config_id("simclr")
    assert study_cfg.config_id("sogclr") != other.config_id("sogclr")

    table_path, plot_path = str(tmp_path / "t.md"), str(tmp_path / "p.png")
    module.write_table(table_path, records, study_cfg, "python bench/small_batch_study.py")
    table = open(table_path).read()
    # Every row is compared with raw pixels, the floor.
    assert "| sogclr | 64 | 3 | 72.0 ± 2.0 | 62.0 ± 2.0 | +4.0 / -1.0 | 100 | 10 |" in table
    assert "| simclr | 64 | 1 | 65.0 | 60.0 | -3.0 / -3.0 |" in table
    assert "| raw_pixels (reference) | — | 1 | 68.0 | 63.0 | — |" in table
    assert "| 64 | 65.0 | 72.0 ± 2.0 | +7.0 | 60.0 | 62.0 ± 2.0 | +2.0 |" in table
    assert "| 512 | 70.0 | — | — | 61.0 | — | — |" in table
    # The paper's claim: SogCLR at each batch against SimCLR at the largest (512).
    assert "SimCLR at the largest (512)" in table
    assert "| 64 | 72.0 ± 2.0 | 70.0 | +2.0 | 62.0 ± 2.0 | 61.0 | +1.0 |" in table
    assert "1 records of other configurations" in table
    module.write_plot(plot_path, records, study_cfg)
    assert open(plot_path, "rb").read(8) == PNG_MAGIC
    done = module.done_runs(records, study_cfg)
    assert module.Run("sogclr", 64, 2) in done and module.Run("sogclr", 64, 9) not in done


def test_probe_recipe_is_the_librarys(module):
    from tf_sogclr.evaluation import frozen_features, linear_probe
    assert (module.PROBE_STEPS, module.PROBE_LR, module.PROBE_L2) == (
        linear_probe.PROBE_STEPS, linear_probe.PROBE_LEARNING_RATE, linear_probe.PROBE_L2)
    assert (module.KNN_K, module.KNN_TEMPERATURE) == (
        frozen_features.KNN_K, frozen_features.KNN_TEMPERATURE)


def test_pretrain_subset_changes_what_pretraining_sees_not_the_probe(module):
    base = module.Study(train_subset=1000)
    wider = module.Study(train_subset=1000, pretrain_subset=6000)
    assert (base.pretrain_split, wider.pretrain_split) == ("train[:1000]", "train[:6000]")
    assert base.train_split == wider.train_split == "train[:1000]"
    assert base.config_id("raw_pixels") == wider.config_id("raw_pixels")
    for method in ("simclr", "sogclr", "supervised"):
        assert base.config_id(method) != wider.config_id(method)
    run = module.Run("sogclr", 100, 0)
    assert module.estimate_s(run, wider, module.builtin_rates()) > module.estimate_s(
        run, base, module.builtin_rates())
    assert module.pretrain_config(base, run, "/tmp/unused").data.train_split == "train[:1000]"
    assert module.pretrain_config(wider, run, "/tmp/unused").data.train_split == "train[:6000]"


def test_bad_subsets_fail_before_any_run_naming_the_flag(tmp_path):
    results = tmp_path / "results"
    bad = study(f"--results_dir={results}", "--workers=0", timeout=120)
    assert bad.returncode != 0 and "--workers: an integer >= 1, got 0" in bad.stderr
    for flag in ("--pretrain_subset=-5", "--train_subset=0"):
        bad = study(f"--results_dir={results}", flag, timeout=120)
        assert bad.returncode != 0 and "--train_subset: an integer >= 1 and --pretrain_subset " \
            "an integer >= 0" in bad.stderr, flag
    assert not results.exists()

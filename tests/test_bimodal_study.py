"""bench/bimodal_study.py: --quick end to end on small slices of both sets, resume, runs, table."""

import functools
import json

import pytest

from bench_scripts import PNG_MAGIC, module_fixture, read_jsonl, run_script, succeeded

study = functools.partial(run_script, "bimodal_study")
module = module_fixture("bimodal_study")

EXAMPLES = 96  # per split of each set in the fixture


@pytest.fixture(scope="module")
def image_text_dir(tmp_path_factory):
    """data_dir with small slices of Fashion-MNIST (templates, single items) and mosaics."""
    from tf_sogclr.data import fashion_mnist, fashion_mnist_mosaics

    data_dir = str(tmp_path_factory.mktemp("tfds_image_text"))
    fashion_mnist.prepare_fashion_mnist(data_dir, max_examples_per_split=EXAMPLES, num_shards=2)
    fashion_mnist_mosaics.prepare_fashion_mnist_mosaics(
        data_dir, max_examples_per_split=EXAMPLES, num_shards=2)
    return data_dir


def test_quick_study_writes_records_table_plot_and_resumes(image_text_dir, tmp_path):
    results = tmp_path / "results"
    args = [f"--results_dir={results}", f"--data_dir={image_text_dir}", "--quick",
            f"--train_subset={EXAMPLES}", f"--test_subset={EXAMPLES}"]
    succeeded(study(*args))

    records = read_jsonl(results / "runs.jsonl")
    assert sorted((r["set"], r["method"], r["batch_size"], r["seed"]) for r in records) == [
        ("mosaics", "clip", 32, 0), ("mosaics", "sogclr", 32, 0),
        ("templates", "clip", 32, 0), ("templates", "sogclr", 32, 0)]
    for r in records:
        assert r["workers"] == 2  # the default: two runs side by side
        scores = r["scores"]
        for direction in ("image_to_text", "text_to_image"):
            recall = [scores[f"{direction}_recall@{k}"] for k in (1, 5, 10)]
            assert 0.0 <= recall[0] <= recall[1] <= recall[2] <= 1.0, (r["set"], recall)
        if r["set"] == "templates":
            assert r["score"] == scores["zero_shot_top1"]
        else:  # recall@1 both ways, averaged; and zero-shot on single items
            assert r["score"] == pytest.approx((scores["image_to_text_recall@1"] +
                                                scores["text_to_image_recall@1"]) / 2)
            assert 0.0 <= scores["item_zero_shot_top1"] <= 1.0
        assert r["steps"] == EXAMPLES // 32 and r["final_logs"]["bad_steps"] == 0
        assert 0.005 < r["final_temperature"] < 1.0  # learnable, inside its range
        assert r["config"]["learnable_temperature"] == 1 and r["commit"]
        assert ("gamma_schedule" in r["config"]) == (r["method"] == "sogclr")
    run_dir = results / "runs" / "mosaics_sogclr_b32_s0"
    assert (run_dir / "train").is_dir() and not list(run_dir.glob("ckpt-*"))
    table = (results / "results.md").read_text()
    for text in ("## templates (primary: zero_shot_top1)", "## mosaics (primary: recall@1)",
                 "| sogclr | 32 | 1 |", "| clip | 32 | 1 |", "| 32 |", "— (one seed)"):
        assert text in table, text
    assert (results / "bimodal.png").read_bytes()[:8] == PNG_MAGIC

    # Re-running skips finished runs; a run missing from the file runs again.
    kept = [r for r in records if (r["set"], r["method"]) != ("templates", "clip")]
    with open(results / "runs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    again = succeeded(study(*args))
    assert "4 runs, 3 already in" in again.stdout and "1 to go" in again.stdout
    assert "templates_clip_b32_s0" in again.stdout
    assert "mosaics_sogclr_b32_s0" not in again.stdout


def test_run_list_covers_both_sets_with_three_seeds_at_32_64_and_256(module):
    runs = module.run_list(module.SETS, list(module.BATCH_SIZES), [0, 1, 2],
                           list(module.MULTI_SEED_BATCHES))
    names = [r.name for r in runs]
    assert len(set(names)) == len(names) == 2 * 4 * 2 + 2 * 3 * 2 * 2
    assert names[:4] == ["templates_sogclr_b32_s0", "templates_clip_b32_s0",
                         "templates_sogclr_b64_s0", "templates_clip_b64_s0"]
    for set_name in module.SETS:
        for method in module.METHODS:
            seeds = {b: sorted(r.seed for r in runs if (r.set_name, r.method, r.batch_size)
                               == (set_name, method, b)) for b in module.BATCH_SIZES}
            assert seeds == {32: [0, 1, 2], 64: [0, 1, 2], 128: [0], 256: [0, 1, 2]}
    # Every seed-0 run comes before the extra seeds, so a partial study is usable.
    assert max(names.index(r.name) for r in runs if r.seed == 0) < min(
        names.index(r.name) for r in runs if r.seed > 0)


def test_both_losses_share_the_recipe_and_sogclr_adds_its_gamma(module):
    sog = module.pretrain_config(module.Study(), module.Run("templates", "sogclr", 64, 0), "/u")
    assert (sog.loss.gamma_schedule, sog.loss.gamma, sog.loss.gamma_decay_epochs) == (
        "constant", 0.9, None)  # the paper's gamma: FastCLIP's cosine lost here (README)
    study_cfg = module.Study(epochs=6, gamma=0.2, gamma_schedule="cosine")
    sog = module.pretrain_config(study_cfg, module.Run("mosaics", "sogclr", 64, 0), "/tmp/u")
    clip = module.pretrain_config(study_cfg, module.Run("mosaics", "clip", 64, 0), "/tmp/u")
    assert (sog.loss.loss, clip.loss.loss) == ("sogclr", "simclr")
    assert sog.optimizer == clip.optimizer and sog.optimizer.optimizer == "adamw"
    assert sog.text.learnable_temperature and clip.text.learnable_temperature
    assert sog.loss.gradient_scale == clip.loss.gradient_scale == "infonce"
    assert (sog.loss.gamma_schedule, sog.loss.gamma, sog.loss.gamma_decay_epochs) == (
        "cosine", 0.2, 3)  # half the epochs, FastCLIP's choice
    assert not sog.data.random_flip and sog.data.crop_area_min == 0.6  # captions name sides
    templates = module.pretrain_config(study_cfg, module.Run("templates", "clip", 64, 0), "/x")
    assert templates.data.random_flip and templates.data.dataset == "fashion_mnist_debian"
    # Config ids: CLIP's ignores SogCLR's gamma; each set and loss has its own.
    other_gamma = module.Study(epochs=6, gamma=0.5, gamma_schedule="cosine")
    assert study_cfg.config_id("mosaics", "clip") == other_gamma.config_id("mosaics", "clip")
    assert study_cfg.config_id("mosaics", "sogclr") != other_gamma.config_id("mosaics", "sogclr")
    assert study_cfg.config_id("mosaics", "sogclr") != study_cfg.config_id("templates", "sogclr")


def test_table_says_whether_the_difference_is_beyond_the_seed_spread(module, tmp_path):
    study_cfg = module.Study(epochs=2)

    def record(method, batch, seed, score):
        return {"set": "templates", "method": method, "batch_size": batch, "seed": seed,
                "score": score, "scores": {"zero_shot_top1": score,
                                           "image_to_text_recall@1": 0.5,
                                           "text_to_image_recall@1": 0.4},
                "final_temperature": 0.02, "examples_per_s": 100.0, "wall_s": 60.0,
                "commit": "abc1234", "config_id": study_cfg.config_id("templates", method)}

    records = [record("sogclr", 32, s, v) for s, v in enumerate((0.60, 0.62, 0.64))]
    records += [record("clip", 32, s, v) for s, v in enumerate((0.50, 0.51, 0.52))]
    records += [record("sogclr", 256, s, v) for s, v in enumerate((0.60, 0.70, 0.80))]
    records += [record("clip", 256, s, v) for s, v in enumerate((0.64, 0.66, 0.68))]
    path = str(tmp_path / "t.md")
    module.write_table(path, records, study_cfg, "python bench/bimodal_study.py")
    table = open(path).read()
    assert "| sogclr | 32 | 3 | 62.0 ± 2.0 | 50.0 ± 0.0 | 40.0 ± 0.0 | 0.020 | 100 | 60 |" in table
    assert "| 32 | 62.0 ± 2.0 | 51.0 ± 1.0 | +11.0 | 2.0 | yes |" in table
    assert "| 256 | 70.0 ± 10.0 | 66.0 ± 2.0 | +4.0 | 10.0 | no |" in table
    assert "runs from commit abc1234" in table and "## mosaics" not in table
    module.write_plot(str(tmp_path / "p.png"), records, study_cfg)
    assert open(tmp_path / "p.png", "rb").read(8) == PNG_MAGIC
    assert module.Run("templates", "clip", 256, 2) in module.done_runs(records, study_cfg)


def test_bad_arguments_fail_before_any_run_naming_the_flag(tmp_path):
    results = tmp_path / "results"
    bad = study(f"--results_dir={results}", "--sets=templates,captions", timeout=120)
    assert bad.returncode != 0 and "--sets: unknown or none ['captions']" in bad.stderr
    bad = study(f"--results_dir={results}", "--batch_sizes=32,20000", timeout=120)
    assert bad.returncode != 0 and "--batch_sizes: 20000 exceeds --train_subset" in bad.stderr
    bad = study(f"--results_dir={results}", "--train_subset=-5", timeout=120)
    assert bad.returncode != 0 and "--train_subset: an integer >= 1, got -5" in bad.stderr
    bad = study(f"--results_dir={results}", "--gamma=1.5", timeout=120)
    assert bad.returncode != 0 and "--gamma" in bad.stderr
    assert not results.exists()


def test_plan_fits_the_budget_and_writes_nothing(module, tmp_path):
    results = tmp_path / "results"
    done = succeeded(study(f"--results_dir={results}", "--plan", timeout=120))
    assert "Runs (40, 0 already done)" in done.stdout
    for name in ("templates_sogclr_b32_s2", "mosaics_clip_b256_s1", "mosaics_sogclr_b128_s0",
                 "mosaics_clip_b64_s2"):
        assert name in done.stdout
    assert "mosaics_clip_b128_s1" not in done.stdout  # one seed away from 32, 64 and 256
    whole = float(done.stdout.split("whole study ")[1].split(" min")[0])
    assert whole <= (1 - module.MARGIN) * module.BUDGET_S / 60 and module.BUDGET_S == 90 * 60
    assert not results.exists()

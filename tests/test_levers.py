"""bench/levers.py: one lever end to end on the 128-example slice, skip on rerun, time -v."""

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "levers.py")
TINY = ("--train_steps=2 --checkpoint_steps=2 --width_multiplier=0.0625 --proj_out_dim=8 "
        "--train_batch_size=16 --eval_batch_size=64 --knn_k=5 --image_size=8")


def levers(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_time_v_report_is_parsed():
    spec = importlib.util.spec_from_file_location("levers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = ("\tUser time (seconds): 100.50\n\tSystem time (seconds): 9.50\n"
              "\tPercent of CPU this job got: 183%\n"
              "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:00.00\n")
    assert module.parse_time_v(report) == (60.0, 110.0, 183.0)
    assert module.parse_time_v(report.replace("1:00.00", "1:02:03.5"))[0] == 3723.5
    # Levers change the default job they were measured against; default_job is run.py's own.
    assert module.LEVERS["default_job"] == []
    assert all(flags[:len(module.PREVIOUS_DEFAULT)] == module.PREVIOUS_DEFAULT
               for name, flags in module.LEVERS.items() if name != "default_job")


def test_a_lever_runs_the_default_job_with_its_flags_and_is_not_rerun(small_fashion_mnist,
                                                                    tmp_path):
    results = tmp_path / "levers"
    args = [f"--results_dir={results}", "--only=baseline",
            f"--extra={TINY} --data_dir={small_fashion_mnist}"]
    done = levers(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["lever"] == "baseline" and record["step"] == 2
    assert record["train_examples"] == 32 and record["cpu_s"] > 0 and record["wall_s"] > 0
    for name in ("knn_top1", "linear_probe_top1", "raw_pixels_knn_top1",
                 "raw_pixels_linear_probe_top1"):
        assert 0.0 <= record["eval"][name] <= 1.0, name
    assert (results / "runs" / "baseline" / "ckpt-2.index").exists()  # kept for re-evaluation
    again = levers(*args)
    assert again.returncode == 0 and again.stdout == "" and "already in" in again.stderr
    assert levers(f"--results_dir={results}", "--only=nope").returncode == 2

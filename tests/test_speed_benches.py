"""bench/alternate.py (alternating runs, medians, ratios), train_bench.py's one case and
step_profile.py (a traced step summed into its parts)."""

import json
import sys

import pytest

import bench_scripts

alternate = bench_scripts.module_fixture("alternate")

# Prints examples/s from a list, one value per call, counting calls in a file.
_FAKE_BENCH = """
import json, sys
counter, values = sys.argv[1], [float(v) for v in sys.argv[2].split(",")]
try:
    calls = int(open(counter).read())
except FileNotFoundError:
    calls = 0
open(counter, "w").write(str(calls + 1))
print("warming up")
print(json.dumps({"examples_per_s": values[calls], "cpu_seconds_per_example": 0.01 * (calls + 1)}))
"""


def _fake(tmp_path, name, values):
    script = tmp_path / "fake_bench.py"
    script.write_text(_FAKE_BENCH)
    return f"{name}={sys.executable} {script} {tmp_path / name} {values}"


def test_alternate_runs_each_command_once_per_round_and_reports_medians_and_ratios(tmp_path):
    done = bench_scripts.succeeded(bench_scripts.run_script(
        "alternate", "--rounds", "3", "--run", _fake(tmp_path, "base", "100,200,100"),
        "--run", _fake(tmp_path, "new", "150,200,250"), timeout=120))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    runs, summary = lines[:-1], lines[-1]["summary"]
    assert [(r["round"], r["name"]) for r in runs] == [
        (0, "base"), (0, "new"), (1, "base"), (1, "new"), (2, "base"), (2, "new")]
    assert [r["examples_per_s"] for r in runs] == [100, 150, 200, 200, 100, 250]
    assert summary["rounds"] == 3
    assert summary["base"]["examples_per_s_median"] == 100
    assert summary["new"]["examples_per_s_median"] == 200
    assert summary["new"]["examples_per_s_range"] == [150, 250]
    assert summary["new"]["cpu_seconds_per_example_median"] == 0.02
    # Ratios are taken within a round: 1.5, 1.0, 2.5.
    assert summary["new"]["ratio_to_base_median"] == 1.5
    assert summary["new"]["ratio_to_base_range"] == [1.0, 2.5]


def test_alternate_refuses_bad_runs_naming_the_flag(tmp_path):
    one = bench_scripts.run_script("alternate", "--run", _fake(tmp_path, "a", "1"), timeout=60)
    assert one.returncode != 0 and "--run: give at least two" in one.stderr
    bad = bench_scripts.run_script("alternate", "--run", "no command", "--run", "b=x", timeout=60)
    assert bad.returncode != 0 and "--run must be NAME=COMMAND, got 'no command'" in bad.stderr
    twice = bench_scripts.run_script("alternate", "--run", _fake(tmp_path, "a", "1"),
                                     "--run", _fake(tmp_path, "a", "1"), timeout=60)
    assert twice.returncode != 0 and "'a' is given twice" in twice.stderr
    rounds = bench_scripts.run_script("alternate", "--rounds", "0", "--run", "a=x", "--run",
                                      "b=y", timeout=60)
    assert rounds.returncode != 0 and "--rounds must be >= 1, got 0" in rounds.stderr


def test_alternate_stops_at_a_failing_command_naming_it(tmp_path):
    failing = f"broken={sys.executable} -c 'import sys; sys.exit(\"no luck\")'"
    done = bench_scripts.run_script("alternate", "--run", _fake(tmp_path, "a", "1"),
                                    "--run", failing, timeout=60)
    assert done.returncode != 0
    assert "failed (1)" in done.stderr and "no luck" in done.stderr


def test_alternate_summarize_matches_by_round(alternate):
    rounds = [{"a": {"examples_per_s": 10.0, "cpu_seconds_per_example": 0.2},
               "b": {"examples_per_s": 30.0, "cpu_seconds_per_example": 0.1}}]
    summary = alternate.summarize(["a", "b"], rounds)
    assert summary["b"]["ratio_to_a_median"] == 3.0
    assert summary["a"]["cpu_seconds_per_example_median"] == 0.2


def test_train_bench_case_train_prints_its_speeds():
    done = bench_scripts.succeeded(bench_scripts.run_script(
        "train_bench", "--case=train", "--batch=8", "--width=0.0625", "--steps=2", timeout=300))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["examples_per_s"] > 0 and result["cpu_seconds_per_example"] > 0
    assert abs(result["seconds_per_step"] * result["examples_per_s"] - 8) < 1e-6
    assert result["replicas"] == 1


def test_train_bench_case_train_splits_the_step_over_cpu_replicas():
    done = bench_scripts.succeeded(bench_scripts.run_script(
        "train_bench", "--case=train", "--batch=8", "--width=0.0625", "--steps=2",
        "--image_size=16", "--channels=1", "--cpu_replicas=2", "--global_bn=0", timeout=300))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["examples_per_s"] > 0 and result["cpu_seconds_per_example"] > 0


@pytest.mark.parametrize("args, message", [
    (["--cpu_replicas=0"], "--cpu_replicas must be an integer >= 1, got 0."),
    (["--image_size=0"], "--image_size must be an integer >= 1, got 0."),
    (["--batch=9", "--cpu_replicas=2"], "--batch (9) must be a multiple of --cpu_replicas (2)."),
    (["--jit", "--cpu_replicas=2"], "--jit needs --cpu_replicas=1"),
    (["--case=pipeline", "--cpu_replicas=2"], "--cpu_replicas > 1 needs --case=train"),
])
def test_train_bench_refuses_bad_arguments_naming_them(args, message):
    done = bench_scripts.run_script("train_bench", "--case=train", *args, timeout=60)
    assert done.returncode == 2 and message in done.stderr


step_profile = bench_scripts.module_fixture("step_profile")


def test_step_profile_names_each_op_by_its_part(step_profile):
    cases = {
        ("while/encoder_1/block_group1_block0_conv1_1/convolution", "_MklNativeConv2D"):
            "convolution_forward",
        ("gradient_tape/while/encoder_1/stem_conv_1/convolution", "Conv2DBackpropFilter"):
            "convolution_backward",
        ("while/encoder_1/stem_batch_norm_1/FusedBatchNormV3", "_MklNativeFusedBatchNormEx"):
            "batch_norm",
        ("gradient_tape/while/encoder_1/stem_batch_norm_relu_1", "ReluGrad"): "relu",
        ("while/cond/then/_1139", "AssignSubVariableOp"): "optimizer_update",
        ("gradient_tape/while/global_contrastive_loss_1/MatMul", "_MklMatMul"):
            "loss_and_u_table",
        ("while/head_supervised_1/MatMul", "_MklMatMul"): "linear_head",
        ("while/IsFinite_58", "IsFinite"): "non_finite_checks",
        ("while/AddN_11", "AddN"): "gradient_sums",
        ("while/concat", "ConcatV2"): "other",
    }
    for (scope, op), part in cases.items():
        assert step_profile.part_of(scope, op) == part, (scope, op)


def test_step_profile_sums_a_traced_step_into_its_parts():
    done = bench_scripts.succeeded(bench_scripts.run_script(
        "step_profile", "--batch=8", "--width=0.0625", "--steps=1", "--top=3",
        "--image_size=16", "--channels=1", timeout=300))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["image_shape"] == [16, 16, 1]  # the default job's and the study's shape
    parts = result["parts"]
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(p["ms_per_step"] for p in parts.values()) == pytest.approx(
        result["op_ms_per_step"], rel=1e-2, abs=0.05)
    # Convolutions and batch norm are found in a ResNet's step.
    assert parts["convolution_forward"]["ms_per_step"] > 0
    assert parts["convolution_backward"]["ms_per_step"] > 0
    assert parts["batch_norm"]["ms_per_step"] > 0
    assert len(result["top_op_types_ms_per_step"]) == 3

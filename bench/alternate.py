"""Alternating speed runs: each command once per round, in turn, medians and ratios at the end.

    python bench/alternate.py --rounds 5 \\
        --run "ours=python bench/train_bench.py --case=train" \\
        --run "pytorch=/tmp/torchvenv/bin/python bench/pytorch_libauc_step.py"

This machine's speed drifts by more than the gaps worth measuring, so one command's runs are
never compared with another's from a different sitting: every round runs each command once,
in the order given, as a fresh process. Each command must print a JSON object as its last
line with `examples_per_s` and `cpu_seconds_per_example`. Prints one JSON line per run, then
one summary line: per command the median and range of examples/s and the median CPU-seconds
per example; per command after the first, the median over rounds of its examples/s over the
first command's in the same round (`ratio_to_<first>`), and that ratio's range.
"""

import argparse
import json
import shlex
import statistics
import subprocess


def parse_runs(specs):
    """`["name=command", ...]` -> `[(name, argv), ...]`; names unique."""
    runs = []
    for spec in specs:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command.strip():
            raise SystemExit(f"--run must be NAME=COMMAND, got {spec!r}.")
        if name in dict(runs):
            raise SystemExit(f"--run names must be unique, {name!r} is given twice.")
        runs.append((name, shlex.split(command)))
    if len(runs) < 2:
        raise SystemExit("--run: give at least two commands to alternate.")
    return runs


def run_once(argv):
    """Runs `argv`; returns the JSON object of its last line of output."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(names, rounds):
    """`rounds`: list of {name: result}. Medians, ranges and per-round ratios to names[0]."""
    summary = {"rounds": len(rounds)}
    for name in names:
        speeds = [r[name]["examples_per_s"] for r in rounds]
        summary[name] = {
            "examples_per_s_median": statistics.median(speeds),
            "examples_per_s_range": [min(speeds), max(speeds)],
            "cpu_seconds_per_example_median": statistics.median(
                r[name]["cpu_seconds_per_example"] for r in rounds)}
    first = names[0]
    for name in names[1:]:
        ratios = [r[name]["examples_per_s"] / r[first]["examples_per_s"] for r in rounds]
        summary[name][f"ratio_to_{first}_median"] = statistics.median(ratios)
        summary[name][f"ratio_to_{first}_range"] = [min(ratios), max(ratios)]
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=COMMAND",
                        help="a command to time (at least two); the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each command (>= 1)")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}.")
    runs = parse_runs(args.run)
    rounds = []
    for index in range(args.rounds):
        results = {}
        for name, argv in runs:
            results[name] = run_once(argv)
            print(json.dumps({"round": index, "name": name, **results[name]}), flush=True)
        rounds.append(results)
    print(json.dumps({"summary": summarize([name for name, _ in runs], rounds)}))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Python interpreter for Bazel's Python toolchain: execs the workspace's .venv python.
# Bazel runs this file from a runfiles tree where it is a symlink to the source
# file, so resolving the symlink gives the workspace root (wherever it is cloned).
# TF_SOGCLR_PYTHON (e.g. via --test_env) overrides the interpreter.
set -euo pipefail
self="$(readlink -f "${BASH_SOURCE[0]}")"
root="${self%/third_party/bazel/python/venv_python.sh}"
py="${TF_SOGCLR_PYTHON:-$root/.venv/bin/python}"
if [[ ! -x "$py" ]]; then
  echo "venv_python.sh: no interpreter at $py (run tools/setup.sh)" >&2
  exit 1
fi
exec "$py" "$@"

#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian 12 / Python 3.11 machine (run as root):
# Debian packages (Fashion-MNIST files, Bazel), a virtual environment in .venv, requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
debs=(dataset-fashion-mnist bazel-bootstrap bazel-platforms bazel-rules-java)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); then
  echo "setup: pip install -r requirements.txt failed" >&2
  exit 1
fi
# Test-only packages, without their dependencies (see requirements-test.txt).
if ! .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    -r requirements-test.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); then
  echo "setup: pip install --no-deps -r requirements-test.txt failed" >&2
  exit 1
fi

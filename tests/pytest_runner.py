"""Bazel py_test entry point: runs one pytest module, `pytest_runner.py tests/test_x.py`.

Bazel starts it from the runfiles tree, where pyproject.toml (rootdir, pytest options)
and tests/conftest.py are data dependencies, so the run matches a plain `pytest`.
"""

import os
import sys

import pytest


def main(argv):
    # Python put this file's symlink-resolved directory (the source tree) first on
    # sys.path; keep imports to the runfiles tree, as declared in BUILD.
    real_dir = os.path.dirname(os.path.realpath(__file__))
    if sys.path and sys.path[0] == real_dir != os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    args = list(argv) + ["-p", "no:cacheprovider"]  # the runfiles tree is not ours to write
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):  # bazel test --test_filter=EXPR
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    if os.environ.get("TEST_TMPDIR"):
        args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    return pytest.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

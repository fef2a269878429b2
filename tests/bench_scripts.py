"""What the tests of bench/ scripts share: running a script, importing it, reading its records."""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def script_path(name):
    """bench/<name>.py."""
    return os.path.join(REPO, "bench", f"{name}.py")


def run_script(name, *args, timeout=900):
    """Runs bench/<name>.py with `args` as a user does; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, script_path(name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def imported(name):
    """bench/<name>.py imported as module `name` (for a module-scoped fixture)."""
    spec = importlib.util.spec_from_file_location(name, script_path(name))
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(loaded)
    try:
        yield loaded
    finally:
        sys.modules.pop(spec.name, None)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def module_fixture(name):
    """A module-scoped pytest fixture yielding bench/<name>.py imported."""
    import pytest

    @pytest.fixture(scope="module")
    def module():
        with imported(name) as loaded:
            yield loaded

    return module


def succeeded(done):
    """`done` (a CompletedProcess) after asserting it exited 0, with its stderr's end if not."""
    assert done.returncode == 0, done.stderr[-3000:]
    return done

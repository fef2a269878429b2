#!/usr/bin/env bash
# Runs Bazel tests offline from the repo root (WORKSPACE, .bazelrc, third_party/bazel/).
#   bash tools/bazel_smoke.sh //:test_losses //:test_distribute   # the given targets
#   bash tools/bazel_smoke.sh                # the tests tagged "smoke" (TEST_TAGS in BUILD)
# Needs tools/setup.sh done (Debian bazel packages, .venv). Prints "bazel: N passed,
# N failed" and exits non-zero if the build or any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v bazel >/dev/null || { echo "bazel_smoke: no bazel (run tools/setup.sh)" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "bazel_smoke: no .venv (run tools/setup.sh)" >&2; exit 1; }
if [ "${CI:-}" = true ]; then
  trap 'bazel shutdown >/dev/null 2>&1' EXIT  # leave no Bazel server behind on CI
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(bazel query --noshow_progress \
    'attr(tags, "\bsmoke\b", tests(//:all))' 2>/dev/null)
  if [ ${#targets[@]} -eq 0 ]; then
    echo "bazel_smoke: no test is tagged \"smoke\" in BUILD; pass targets" >&2
    exit 1
  fi
fi

log="$(mktemp)"
bazel test "${targets[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|FLAKY|INCOMPLETE|NO STATUS)' "$log")
rm -f "$log"
echo "bazel: $passed passed, $failed failed"
exit "$rc"

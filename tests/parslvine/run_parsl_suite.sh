#!/usr/bin/env bash
# Run Parsl's own test suite (shipped inside the installed parsl package) against parslvine.
#
#   tests/parslvine/run_parsl_suite.sh regular|serverless [extra pytest args]
#
# Environment: PARSLVINE_VENV (default: the repository's .venv) must hold parsl[monitoring],
# pytest (<9; Parsl pins >=7.4,<8 and 8.4 works), pytest-random-order, pytest-timeout, pandas.
set -euo pipefail

MODE=${1:?usage: run_parsl_suite.sh regular|serverless [pytest args]}
shift
case "$MODE" in regular|serverless) ;; *) echo "mode must be regular or serverless, not '$MODE'" >&2; exit 2;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${PARSLVINE_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
PARSL_TESTS=$("$PY" -c 'import os, parsl; print(os.path.join(os.path.dirname(parsl.__file__), "tests"))')

# Workers (started by the factory) and the apps they run must import parslvine and core; the
# venv's bin must be on PATH (Parsl's bash apps and helpers call tools from it).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$VENV/bin:$PATH"
export PARSLVINE_MODE=$MODE

# Parsl's conftest writes pytest-parsl/ and runinfo/ under the current directory: a scratch one.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/parslvine-suite-$MODE.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
# An empty ini file, so our pyproject's pytest settings (warnings as errors, strict markers,
# 120 s timeouts) do not apply: Parsl's own conftest governs its suite.
printf '[pytest]\n' > pytest.ini

# Deselections (REFERENCE §7.3), each for an environment reason:
#   cleannet                              needs a clean network (FTP/HTTP to the internet); CI has none
#   unix_filesystem_permissions_required  CI runs as root, which ignores file permissions
#   staging_required                      needs a staging provider for a non-shared filesystem
#   shared_fs                             needs the workers to share the test's filesystem (absolute
#                                         paths are not staged), which a cluster may not give
# Both last ones do pass when the workers run on this machine (as in CI): to run them too, add
#   -k "not cleannet and not unix_filesystem_permissions_required"
# after MODE (pytest keeps the last -k): 143 passed, 2 skipped in either mode.
# Parsl's test_stdout_stderr_staging_zip races with itself (Parsl issue #3467, open, also seen in
# Parsl's own CI with HTEX): stdout's and stderr's zip stage-outs are two apps on the DFK's internal
# thread pool appending to one zip under a file lock, and the test opens the zip without that lock
# as soon as stdout's is done. The executor under test plays no part in it. So if that test is the
# only one that failed, it runs again alone, up to twice, and must pass; the first failure is
# still printed above, and any other failure fails the run as usual.
KNOWN_RACE=test_stdout_stderr_staging_zip
status=0
"$PY" -m pytest "$PARSL_TESTS" \
    -c "$WORK/pytest.ini" --rootdir "$PARSL_TESTS" \
    --config "$ROOT/tests/parslvine/parsl_suite_config.py" \
    -k "not cleannet and not unix_filesystem_permissions_required and not staging_required and not shared_fs" \
    --random-order --durations 10 -p no:cacheprovider --timeout 300 \
    --junitxml "$WORK/junit.xml" \
    "$@" || status=$?
[ "$status" -eq 0 ] && exit 0
failed=$("$PY" - "$WORK/junit.xml" <<'PYEOF' || true
import sys, xml.etree.ElementTree as ET
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
print(" ".join(sorted({c.get("name", "") for c in cases if c.find("failure") is not None or c.find("error") is not None})))
PYEOF
)
if [ "$status" -ne 1 ] || [ "$failed" != "$KNOWN_RACE" ]; then exit "$status"; fi
for attempt in 1 2; do
    echo "run_parsl_suite.sh: only $KNOWN_RACE failed (Parsl issue #3467, a race in the test itself); running it alone again ($attempt of 2)" >&2
    if "$PY" -m pytest "$PARSL_TESTS" -c "$WORK/pytest.ini" --rootdir "$PARSL_TESTS" \
        --config "$ROOT/tests/parslvine/parsl_suite_config.py" -k "$KNOWN_RACE" \
        -p no:cacheprovider --timeout 300 -q; then exit 0; fi
done
exit 1

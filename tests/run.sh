#!/usr/bin/env bash
# Install what the tests need (pinned: tests/requirements.txt) into the current Python environment,
# then run the whole suite. Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` for
# the fast subset or `bash tests/run.sh tests/test_finetune.py -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" - <<'PY' 2>/dev/null
import importlib.metadata as m, pathlib, re
for line in pathlib.Path("tests/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        name, version = re.split(r"==", line)
        assert m.version(name).split("+")[0] == version, name
import accessory  # the package itself, installed in editable mode
PY
then
  echo "installing the test requirements (tests/requirements.txt) and accessory (pip install -e .)..."
  "$PYTHON" -m pip install -q -r tests/requirements.txt
  "$PYTHON" -m pip install -q -e .
fi

status=0
"$PYTHON" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: check the arguments" >&2
  exit 1
fi
exit "$status"

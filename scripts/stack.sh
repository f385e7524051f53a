#!/usr/bin/env bash
# The production layout as local processes on 127.0.0.1 (finetune_assets/launch/stack.py):
#   bash scripts/stack.sh up       Postgres, MLflow server, Ray head + worker (token auth), Dagster code server,
#                                  webserver and daemon; prints the URLs and the env file to source
#   bash scripts/stack.sh status   which services run, by recorded PID
#   bash scripts/stack.sh down     stops exactly what `up` started (by PID, in reverse order)
# Data, logs and secrets live in FINETUNE_ASSETS_STACK_DIR (default $FINETUNE_ASSETS_HOME/stack); as root,
# PostgreSQL runs as the `postgres` user, which must reach that folder (not under /root: use /var/tmp/...).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = up ] && bash scripts/setup.sh --stack
export FINETUNE_ASSETS_HOME=${FINETUNE_ASSETS_HOME:-$PWD/.finetune_assets}
exec .venv/bin/finetune-assets stack "$@"

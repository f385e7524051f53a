#!/usr/bin/env bash
# The README's two commands. Each sets everything up first (idempotent), then:
#   bash scripts/run.sh demo   materializes the whole asset graph on the demo profile
#   bash scripts/run.sh test   runs the test suite (smoke profile, tiny model; what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
# the tests start the production stack too (finetune_assets_tests/launch/test_stack.py): PostgreSQL with it
if [ "${1:-}" = test ]; then bash scripts/setup.sh --stack; else bash scripts/setup.sh; fi
export TOKENIZERS_PARALLELISM=false
export MLFLOW_DISABLE_TELEMETRY=true DAGSTER_DISABLE_TELEMETRY=1
export FINETUNE_ASSETS_HOME=${FINETUNE_ASSETS_HOME:-$PWD/.finetune_assets}
export DAGSTER_HOME=${DAGSTER_HOME:-$FINETUNE_ASSETS_HOME/dagster}
case "${1:-}" in
  # demo: torch uses every core in this process (eval, preference generation) and the training worker gets
  # all of them too (scaling.cpus_per_worker unset). test: one thread; on a busy 2-core box two threads made
  # the tiny model's training ~9x slower.
  demo) shift; exec .venv/bin/finetune-assets demo --profile "${FINETUNE_ASSETS_PROFILE:-demo}" "$@" ;;
  test) shift; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        .venv/bin/ruff check finetune_assets finetune_assets_tests bench
        exec .venv/bin/python -m pytest -q -m "not slow" "$@" ;;
  *) echo "usage: bash scripts/run.sh demo|test [args]" >&2; exit 2 ;;
esac

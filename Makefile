# The few targets a newcomer needs. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true
export DAGSTER_DISABLE_TELEMETRY := 1
HOME_DIR ?= $(CURDIR)/.finetune_assets
export FINETUNE_ASSETS_HOME ?= $(HOME_DIR)
export DAGSTER_HOME ?= $(HOME_DIR)/dagster
VENV := .venv/bin

.PHONY: setup demo test test-all stack-up stack-down stack-status bench bench-dedup-scale bench-semdedup bench-backfill bench-serve bench-train bench-sweep bench-eval bench-eval-layout learning-curve tr-probe lint format ui mlflow-ui clean

setup:            ## create .venv and install everything (idempotent)
	bash scripts/setup.sh

demo:             ## materialize the whole graph on the demo profile (SmolLM2 on the Python docs)
	bash scripts/run.sh demo

test:             ## the test suite (smoke profile, tiny model); what CI runs
	bash scripts/run.sh test

test-all: setup   ## also the slow tests (real SmolLM2 conversion)
	OMP_NUM_THREADS=1 $(VENV)/python -m pytest -q

stack-up:         ## the production layout on 127.0.0.1 (Postgres, MLflow, Ray head + worker, Dagster webserver/daemon/code server)
	bash scripts/stack.sh up

stack-down:       ## stop exactly what stack-up started
	bash scripts/stack.sh down

stack-status:
	bash scripts/stack.sh status

bench-serve: setup  ## load test of `finetune-assets serve` on loopback: 1, 4, 16 clients, latency percentiles, memory
	OMP_NUM_THREADS=1 $(VENV)/python bench/serve_load.py $(ARGS)

bench-dedup-scale: setup  ## dedup_corpus at 200k generated documents: local vs Ray Data path, same kept set, throughput, driver/worker peak memory
	OMP_NUM_THREADS=1 $(VENV)/python bench/dedup_scale_bench.py $(ARGS)

bench-semdedup: setup  ## what the semantic dedup stage removes on the demo corpus (counts, cosine bands, examples)
	OMP_NUM_THREADS=1 $(VENV)/python bench/semdedup_demo.py $(ARGS)

bench-backfill: setup  ## 50 drops curated one by one vs one backfill: same dedup_corpus, wall time and peak memory of both
	OMP_NUM_THREADS=1 $(VENV)/python bench/backfill_bench.py $(ARGS)

bench: setup      ## dedup benchmark: throughput vs datasketch's per-document loop, precision/recall
	$(VENV)/python bench/dedup_bench.py

bench-train: setup  ## training benchmark: tokens/s and MFU of this project's SFT path vs plain trl defaults (tiny model; ARGS="--model smollm2")
	$(VENV)/python bench/train_bench.py $(ARGS)

learning-curve: setup  ## after a demo: hallucination index vs SFT examples seen (0/240/480/960/1920), paired vs the base
	$(VENV)/python bench/learning_curve.py --home $(FINETUNE_ASSETS_HOME) $(ARGS)

bench-sweep: setup  ## after a demo: a 6-trial Ray Tune study of SFT on SmolLM2, best trial vs the recipe default (paired, same validation rows)
	OMP_NUM_THREADS=1 $(VENV)/python bench/sweep_bench.py --home $(FINETUNE_ASSETS_HOME) $(ARGS)

tr-probe: setup  ## after a demo: train the T&R stage alone (ARGS="--steps 60 --set retrieval.top_k=1") and score tool use
	$(VENV)/python bench/tr_probe.py --home $(FINETUNE_ASSETS_HOME) $(ARGS)

bench-eval: setup   ## evaluation generation: tokens/s of batched greedy decoding vs one prompt at a time (SmolLM2; ARGS="--model tiny")
	$(VENV)/python bench/eval_bench.py $(ARGS)

bench-eval-layout: setup  ## evaluation layout: one process on every core vs one single-threaded process per core (ARGS="--model tiny")
	$(VENV)/python bench/eval_parallel_bench.py $(ARGS)

lint:
	$(VENV)/ruff check . && $(VENV)/ruff format --check .

format:
	$(VENV)/ruff check --fix . && $(VENV)/ruff format .

ui:               ## the Dagster UI on http://127.0.0.1:3000
	mkdir -p $(DAGSTER_HOME) && [ -f $(DAGSTER_HOME)/dagster.yaml ] || cp dagster.yaml $(DAGSTER_HOME)/
	$(VENV)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui:        ## the MLflow UI on http://127.0.0.1:5000
	$(VENV)/mlflow ui --backend-store-uri sqlite:///$(FINETUNE_ASSETS_HOME)/mlflow/mlflow.db -h 127.0.0.1 -p 5000

clean:            ## remove all artifacts, runs and the landing directory (keeps .venv)
	rm -rf $(HOME_DIR)

"""Materialize the whole graph in-process: every data drop's raw_corpus partition, then everything downstream.

Used by `finetune-assets demo` and the end-to-end test; the Dagster UI does the same through its own runs.
"""

from dataclasses import dataclass, field

import dagster as dg

from finetune_assets.definitions import defs
from finetune_assets.defs import automation
from finetune_assets.defs.data import data_drops, raw_corpus
from finetune_assets.phases.data import corpus, demo_seed


@dataclass
class GraphRun:
    drops: list[str]
    run_ids: list[str] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # failed blocking checks that stopped downstream assets


def all_assets_and_checks() -> list:
    return [*defs.assets, *defs.asset_checks]


def materialize_graph(instance: dg.DagsterInstance, resources: dict, seed_demo: bool = True) -> GraphRun:
    """Seed the demo landing if empty, register drops, ingest each one, then build the rest of the graph."""
    profile = resources["recipe"].load()
    landing = resources["store"].landing_dir(profile.corpus.landing_dir)
    if seed_demo:
        demo_seed.seed_demo_landing(landing, profile.corpus)
    drops = corpus.list_drops(landing)
    if not drops:
        raise corpus.EmptyCorpusError(
            f"no data drops in {landing}: put a folder or file of documents there "
            f"(supported: {', '.join(profile.corpus.extensions)})"
        )
    known = set(instance.get_dynamic_partitions(data_drops.name))
    instance.add_dynamic_partitions(data_drops.name, [d for d in drops if d not in known])
    graph = GraphRun(drops=drops)
    assets = all_assets_and_checks()
    for drop in drops:
        result = dg.materialize(
            assets, instance=instance, resources=resources, partition_key=drop, selection=[raw_corpus]
        )
        graph.run_ids.append(result.run_id)
    downstream = automation.retrain_job.selection
    result = dg.materialize(
        assets, instance=instance, resources=resources, selection=downstream, raise_on_error=False
    )
    graph.run_ids.append(result.run_id)
    graph.blocked = _blocking_failures(result)
    failures = result.get_step_failure_events()
    if not result.success and not (
        graph.blocked and all(ev.step_key.endswith(_GATE_STEPS) for ev in failures)
    ):
        first = failures[0] if failures else None
        error = first.event_specific_data.error if first and first.event_specific_data else None
        where = first.step_key if first else "run setup"
        raise RuntimeError(f"{where} failed: {error.message.strip() if error else 'see the run events'}")
    graph.materialized = sorted(
        ev.asset_key.to_user_string() for ev in result.get_asset_materialization_events()
    )
    return graph


# A refused promotion (every candidate failed a guardrail) stops the champion asset, not the whole graph.
_GATE_STEPS = ("promotion_gate",)


def _blocking_failures(result) -> list[str]:
    """'asset:check' for each failed ERROR-severity check evaluation of the run."""
    return [
        f"{ev.asset_key.to_user_string()}:{ev.check_name}"
        for ev in result.get_asset_check_evaluations()
        if not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    ]

"""Helpers for the Dagster wiring: resources pointed at a temporary home, the expected asset keys, ingestion."""

from pathlib import Path

import dagster as dg
import pytest

from finetune_assets.defs.resources import (
    ArtifactStore,
    MlflowResource,
    RayResource,
    RecipeResource,
    RequestLogResource,
)

# The fourteen asset keys of the code location (docs/ARCHITECTURE.md).
EXPECTED_ASSETS = {
    "raw_corpus",
    "dedup_corpus",
    "eval_sets",
    "instruction_set",
    "preference_pairs",
    "base_checkpoint",
    "inst_model",
    "dpo_model",
    "retrieval_index",
    "tr_model",
    "eval_reports",
    "champion",
    "online_feedback",
    "ab_report",
    "hpo_study",
}


def make_resources(home: Path, profile: str = "smoke") -> dict:
    return {
        "recipe": RecipeResource(profile=profile),
        "store": ArtifactStore(root=str(home / "artifacts")),
        "ray": RayResource(num_cpus=2, object_store_mb=256),
        "mlflow": MlflowResource(
            tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_location=str(home / "mlartifacts")
        ),
        "request_log": RequestLogResource(url=f"sqlite:///{home / 'serving' / 'requests.sqlite'}"),
    }


@pytest.fixture
def resources(fa_home: Path) -> dict:
    return make_resources(fa_home)


def ingest_landing(
    instance: dg.DagsterInstance, resources: dict, landing: Path, drops: list[str] | None = None
) -> list:
    """Register the landing folder's drops (or ``drops``) as partitions and materialize raw_corpus for each;
    returns the asset list with checks, for the materializations that follow."""
    from finetune_assets.defs.data import data_drops, raw_corpus
    from finetune_assets.phases.data import corpus
    from finetune_assets.pipeline import all_assets_and_checks

    drops = drops if drops is not None else corpus.list_drops(landing)
    instance.add_dynamic_partitions(data_drops.name, drops)
    assets = all_assets_and_checks()
    for drop in drops:
        dg.materialize(
            assets, instance=instance, resources=resources, partition_key=drop, selection=[raw_corpus]
        )
    return assets

"""What every asset does around its one phase call: an MLflow child run and uniform metadata."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from finetune_assets.config import LLMEndpointConfig, default_home
from finetune_assets.defs.resources import MlflowResource
from finetune_assets.io import content_hash
from finetune_assets.phases.inference import llm
from finetune_assets.phases.inference.llm import ChatClient
from finetune_assets.phases.training.artifacts import loadable_dir
from finetune_assets.tracking import Tracker


@contextmanager
def tracked_run(
    context: dg.AssetExecutionContext, mlflow: MlflowResource, params: dict | None = None
) -> Iterator[tuple[Tracker, str]]:
    """One MLflow run per asset materialization, grouped under the Dagster run's parent run."""
    tracker = mlflow.tracker()
    asset = context.asset_key.to_user_string()
    tags = {"dagster.partition": context.partition_key} if context.has_partition_key else {}
    with tracker.asset_run(context.run.run_id, asset, tags=tags) as run_id:
        if params:
            tracker.log_params(run_id, params)
        yield tracker, run_id


def artifact_metadata(path: Path, run_id: str, counts: dict | None = None, **extra) -> dict:
    """Path, content hash, MLflow run id and counts: the same keys on every asset."""
    metadata = {
        "path": dg.MetadataValue.path(str(path)),
        "content_hash": content_hash(path),
        "mlflow_run_id": run_id,
    }
    for key, value in (counts or {}).items():
        metadata[key] = value if isinstance(value, int | float | str | bool) else dg.MetadataValue.json(value)
    metadata.update(extra)
    return metadata


def model_dir(store, asset: str) -> Path:
    """The loadable Hugging Face folder of a model asset (merged weights + tokenizer + chat template)."""
    return loadable_dir(store.path(asset))


def input_path(name: str) -> Path:
    """A seed or feedback file named in a recipe: absolute as given, relative under $FINETUNE_ASSETS_HOME/inputs
    (not the landing folder, where every entry is a data drop)."""

    path = Path(name)
    return path if path.is_absolute() else default_home() / "inputs" / path


def llm_client(endpoint: LLMEndpointConfig) -> ChatClient:
    """The teacher or judge client of a recipe's endpoint, its responses cached under the project home."""
    return llm.make_client(endpoint, default_home() / "llm_cache")


def warn_quarantined(context, quarantine: list[dict]) -> None:
    """One warning per set-aside line in the run's log, naming the file, the line and the reason."""
    for entry in quarantine:
        context.log.warning(f"quarantined {entry['path']}:{entry['line']}: {entry['reason']}")

"""MLflow lineage and metrics, without dagster: one run per asset materialization under a parent run per
pipeline run, dataset inputs with digests, and one registered model version per model variant.

Uses MlflowClient (no global active-run state) so several assets in one process never share a run by accident.
"""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARENT_TAG = "finetune_assets.parent"
PIPELINE_RUN_TAG = "dagster.run_id"
REGISTERED_MODEL = "finetune_assets"


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"


class Tracker:
    """Thin wrapper over MlflowClient bound to one tracking URI and experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            if artifact_location and "://" not in artifact_location:
                Path(artifact_location).mkdir(parents=True, exist_ok=True)
                artifact_location = Path(artifact_location).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location
            )

    def parent_run(self, pipeline_run_id: str, name: str) -> str:
        """The MLflow run that groups every asset of one pipeline (Dagster) run; created on first use."""
        query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{PARENT_TAG}` = 'true'"
        found = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={PIPELINE_RUN_TAG: pipeline_run_id, PARENT_TAG: "true"}
        )
        return run.info.run_id

    @contextmanager
    def asset_run(self, pipeline_run_id: str, asset: str, tags: dict | None = None) -> Iterator[str]:
        """A child run for one asset materialization; marked FAILED if the body raises."""
        parent = self.parent_run(pipeline_run_id, name=f"pipeline-{pipeline_run_id[:8]}")
        all_tags = {
            "mlflow.parentRunId": parent,
            PIPELINE_RUN_TAG: pipeline_run_id,
            "asset_key": asset,
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        run = self.client.create_run(self.experiment_id, run_name=asset, tags=all_tags)
        run_id = run.info.run_id
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            self.client.set_terminated(parent, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        # The parent ends with its latest child (no pipeline-level hook needed): never left RUNNING.
        self.client.set_terminated(parent, status="FINISHED")

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k.replace("@", "_"), float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and v == v  # skip NaN
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_metric_history(self, run_id: str, name: str, values: list) -> None:
        """Per-step values in batch calls: plain values (steps 1, 2, ...) or (step, value) pairs."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        pairs = [v if isinstance(v, list | tuple) else (i, v) for i, v in enumerate(values, start=1)]
        items = [Metric(name, float(v), now, int(step)) for step, v in pairs]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_input(self, run_id: str, name: str, path: Path, digest: str, context: str = "training") -> None:
        """Record a dataset this run consumed: its location and content digest (MLflow's dataset lineage)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(
            resolve_dataset_source(str(Path(path).resolve())), name=name, digest=digest[:36]
        )
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[tag])])

    def log_variant_metrics(self, parent_run_id: str, variant: str, metrics: dict) -> str:
        """One run per evaluated variant with the same metric names, so MLflow's compare view lines them up."""
        parent = self.client.get_run(parent_run_id)
        tags = {
            "mlflow.parentRunId": parent_run_id,
            PIPELINE_RUN_TAG: parent.data.tags.get(PIPELINE_RUN_TAG, ""),
            "variant": variant,
            "finetune_assets.kind": "variant_eval",
        }
        run = self.client.create_run(self.experiment_id, run_name=f"eval-{variant}", tags=tags)
        self.log_metrics(run.info.run_id, metrics)
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return run.info.run_id

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def register_model(self, variant: str, model_dir: Path, run_id: str, tags: dict | None = None) -> str:
        """Register a model folder as a version of the project's registered model; returns the version."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(REGISTERED_MODEL)
        except MlflowException:
            pass  # already registered
        version = self.client.create_model_version(
            REGISTERED_MODEL,
            source=Path(model_dir).resolve().as_uri(),
            run_id=run_id,
            tags={"variant": variant, **{k: str(v) for k, v in (tags or {}).items()}},
        )
        self.client.set_registered_model_alias(REGISTERED_MODEL, f"latest-{variant}", version.version)
        return version.version

    def tag_model_version(self, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(REGISTERED_MODEL, version, key, str(value))

    def latest_version(self, variant: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(REGISTERED_MODEL, f"latest-{variant}").version
        except MlflowException:
            return None


def _flatten(obj: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out

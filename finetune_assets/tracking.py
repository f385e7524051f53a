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
KIND_TAG = "finetune_assets.kind"
VARIANT_EVAL = "variant_eval"
CHAMPION_ALIAS = "champion"
# Older names of per-step metrics: training logs its loss as ``train_loss`` (the other step metrics as
# ``train/<name>``), so a request for ``train/loss`` falls back to it.
METRIC_FALLBACKS = {"train/loss": ("train_loss",)}
# A metric's confidence interval is logged next to it under these suffixes (and tagged on model versions).
CI_LOW, CI_HIGH = "/ci_low", "/ci_high"


def interval_metrics(intervals: dict | None) -> dict[str, float]:
    """{metric: {"low", "high", ...}} -> {"<metric>/ci_low": low, "<metric>/ci_high": high}."""
    out = {}
    for metric, iv in (intervals or {}).items():
        out[f"{metric}{CI_LOW}"] = iv["low"]
        out[f"{metric}{CI_HIGH}"] = iv["high"]
    return out


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"


def resolve_model_uri(uri: str, tracking_uri: str, cache_dir: Path) -> tuple[Path, str]:
    """(local model folder, version) of a registered variant: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    A version whose source is a local folder is used in place; any other source (a tracking server's
    artifacts) is downloaded once into ``cache_dir``/NAME-vVERSION (into a temporary folder, then renamed)."""
    from urllib.parse import unquote, urlparse

    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    from finetune_assets import io

    spec = uri.removeprefix("models:/")
    if spec == uri or not spec:
        raise ValueError(
            f"{uri!r} is not a registered model URI: use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    client = MlflowClient(tracking_uri)
    if "@" in spec:
        name, alias = spec.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = spec.partition("/")
        found = client.get_model_version(name, number)
    if found.source.startswith("file:"):
        return Path(unquote(urlparse(found.source).path)), found.version
    target = Path(cache_dir) / f"{name}-v{found.version}"
    if not target.is_dir():
        with io.atomic_dir(target) as tmp:
            download_artifacts(artifact_uri=found.source, dst_path=str(tmp), tracking_uri=tracking_uri)
    inner = [p for p in target.iterdir() if p.is_dir()]
    return (inner[0] if not (target / "config.json").exists() and len(inner) == 1 else target), found.version


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

    def child_run(
        self, parent_run_id: str, name: str, params: dict, curves: dict, tags: dict | None = None
    ) -> str:
        """A finished run under ``parent_run_id`` with ``params`` and per-step ``curves`` ({metric: [(step,
        value)]}): one trial of a hyperparameter study."""
        all_tags = {"mlflow.parentRunId": parent_run_id, **{k: str(v) for k, v in (tags or {}).items()}}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        self.log_params(run_id, params)
        for metric, values in curves.items():
            self.log_metric_history(run_id, metric, values)
        failed = (tags or {}).get("status") == "error"
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
        return run_id

    def set_tags(self, run_id: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
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

    def log_variant_metrics(
        self,
        parent_run_id: str,
        variant: str,
        metrics: dict,
        intervals: dict | None = None,
        artifacts: tuple[Path, ...] | list[Path] = (),
    ) -> str:
        """One run per evaluated variant with the same metric names, so MLflow's compare view lines them up;
        each interval as ``<metric>/ci_low`` and ``/ci_high`` beside its metric; ``artifacts`` (e.g. the
        per-item outcomes) attached to the run."""
        parent = self.client.get_run(parent_run_id)
        tags = {
            "mlflow.parentRunId": parent_run_id,
            PIPELINE_RUN_TAG: parent.data.tags.get(PIPELINE_RUN_TAG, ""),
            "variant": variant,
            KIND_TAG: VARIANT_EVAL,
        }
        run = self.client.create_run(self.experiment_id, run_name=f"eval-{variant}", tags=tags)
        self.log_metrics(run.info.run_id, {**metrics, **interval_metrics(intervals)})
        for path in artifacts:
            self.client.log_artifact(run.info.run_id, str(path))
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
            source=self._model_source(model_dir, run_id),
            run_id=run_id,
            tags={"variant": variant, **{k: str(v) for k, v in (tags or {}).items()}},
        )
        self.client.set_registered_model_alias(REGISTERED_MODEL, f"latest-{variant}", version.version)
        return version.version

    @property
    def remote(self) -> bool:
        """A tracking server (http/https/databricks): its clients may not see this machine's folders."""
        return not self.tracking_uri.startswith(("sqlite:", "file:", "/")) and "://" in self.tracking_uri

    def _model_source(self, model_dir: Path, run_id: str) -> str:
        """Where the registered version points: the local folder for a local store; for a tracking server,
        the folder uploaded into the run's artifacts (``model/``), so every client can download it."""
        if not self.remote:
            return Path(model_dir).resolve().as_uri()
        self.client.log_artifacts(run_id, str(model_dir), "model")
        return f"{self.client.get_run(run_id).info.artifact_uri}/model"

    def tag_model_version(self, version: str, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(REGISTERED_MODEL, version, key, str(value))

    def latest_version(self, variant: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(REGISTERED_MODEL, f"latest-{variant}").version
        except MlflowException:
            return None

    def version_run_id(self, version: str) -> str | None:
        """The MLflow run a registered model version was logged from (its training run), or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(REGISTERED_MODEL, str(version)).run_id or None
        except MlflowException:
            return None

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every logged value of ``key`` in ``run_id`` as (step, value), by step (then logging time)."""
        history = self.client.get_metric_history(run_id, key)
        ordered = sorted(history, key=lambda m: (m.step, m.timestamp))
        return [(int(m.step), float(m.value)) for m in ordered]

    def training_curves(
        self, variants: list[str], keys: tuple[str, ...] | list[str] = ("train/loss",)
    ) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """{variant: {key: [(step, value)]}} from the training run behind each variant's ``latest-<variant>``
        version. Variants without a version, and keys without history, are left out (so is a variant left with
        no key); ``train/loss`` falls back to the ``train_loss`` name the training assets log."""
        curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for variant in variants:
            version = self.latest_version(variant)
            run_id = self.version_run_id(version) if version is not None else None
            if run_id is None:
                continue
            found = {}
            for key in keys:
                for name in (key, *METRIC_FALLBACKS.get(key, ())):
                    points = self.metric_history(run_id, name)
                    if points:
                        found[key] = points
                        break
            if found:
                curves[variant] = found
        return curves

    def champion(self) -> dict | None:
        """The version under the registered model's ``champion`` alias: {"version", "variant", "tags"}."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
        except MlflowException:
            return None
        tags = dict(version.tags or {})
        return {"version": version.version, "variant": tags.get("variant"), "tags": tags}

    def set_champion(self, version: str) -> None:
        """Point the ``champion`` alias at ``version`` (the alias moves; the previous champion keeps its tags)."""
        self.client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, str(version))

    def compare_table(
        self, last: int = 1, pipeline_run_ids: list[str] | None = None, metrics: list[str] | None = None
    ) -> list[dict]:
        """Variant evaluations side by side: one row {"pipeline_run", "started", "variant", <metric>: value}
        per (pipeline run, variant), newest pipeline run first, variants in evaluation order.

        ``last``: how many of the newest pipeline runs (ignored when ``pipeline_run_ids`` names them);
        ``metrics``: the metric columns (missing ones are None); default: every metric each run logged.
        A variant evaluated twice in one pipeline run shows its newest evaluation.
        """
        wanted = set(pipeline_run_ids) if pipeline_run_ids else None
        limit = None if wanted else max(int(last), 1)
        query = f"tags.`{KIND_TAG}` = '{VARIANT_EVAL}'"
        groups: dict[str, dict[str, object]] = {}  # pipeline run -> {variant: newest run}
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=query,
                order_by=["attributes.start_time DESC"],
                max_results=500,
                page_token=token,
            )
            for run in page:
                pipeline = run.data.tags.get(PIPELINE_RUN_TAG, "")
                if wanted is not None and pipeline not in wanted:
                    continue
                if pipeline not in groups:
                    if limit is not None and len(groups) >= limit:
                        continue  # an older pipeline run (keep scanning: concurrent runs may interleave)
                    groups[pipeline] = {}
                groups[pipeline].setdefault(run.data.tags.get("variant", ""), run)
            token = page.token
            if not token:
                break
        rows = []
        for pipeline, by_variant in groups.items():
            for variant, run in sorted(by_variant.items(), key=lambda item: item[1].info.start_time):
                values = run.data.metrics
                names = metrics if metrics is not None else sorted(values)
                rows.append(
                    {
                        "pipeline_run": pipeline,
                        "started": _iso(run.info.start_time),
                        "variant": variant,
                        **{name: values.get(name) for name in names},
                    }
                )
        return rows


def _iso(millis: int | None) -> str:
    from datetime import UTC, datetime

    if millis is None:
        return ""
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(timespec="seconds")


def flatten(obj: dict, prefix: str = "", *, numbers_only: bool = False) -> dict:
    """Nested dicts to dotted keys ({"a": {"b": 1}} -> {"a.b": 1}); ``numbers_only`` keeps the numeric leaves
    (what MLflow metrics accept)."""
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}.", numbers_only=numbers_only))
        elif not numbers_only or (isinstance(value, int | float) and not isinstance(value, bool)):
            out[name] = value
    return out

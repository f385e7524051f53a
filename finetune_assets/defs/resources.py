"""Resources: each has an embedded single-machine default and a scale-out setting (configuration, not code).

- RecipeResource: which recipe (profile) the run uses.
- ArtifactStore: where datasets (Parquet) and model folders live.
- RayResource: no address = embedded local Ray; an address joins an existing cluster.
- MlflowResource: no URI = local sqlite store; an http(s) URI uses a tracking server.
- RequestLogResource: the model server's request/feedback log; no URL = sqlite under the home (where
  `finetune-assets serve` writes by default), a postgresql:// URL = the production stack's database.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from finetune_assets.config import default_home
from finetune_assets.launch.ray_cluster import ensure_ray
from finetune_assets.recipe import Profile, load_profile
from finetune_assets.tracking import Tracker, default_tracking_uri


class RecipeResource(dg.ConfigurableResource):
    profile: str = Field("demo", description="Recipe name under recipes/ (smoke, demo, ...) or a YAML path.")

    def load(self) -> Profile:
        return load_profile(self.profile)


class ArtifactStore(dg.ConfigurableResource):
    root: str | None = Field(None, description="Artifact root; default $FINETUNE_ASSETS_HOME/artifacts.")

    def base(self) -> Path:
        return Path(self.root).resolve() if self.root else default_home() / "artifacts"

    def path(self, asset: str, partition: str | None = None) -> Path:
        return self.asset_root(asset) / (partition or "current")

    def asset_root(self, asset: str) -> Path:
        """The folder of every partition of ``asset`` (``current`` for an unpartitioned one)."""
        return self.base() / asset

    def landing_dir(self, configured: str | None) -> Path:
        return Path(configured).resolve() if configured else default_home() / "landing"


class RayResource(dg.ConfigurableResource):
    address: str | None = Field(
        None, description="Ray cluster address (host:port); empty = embedded local Ray."
    )
    num_cpus: int | None = Field(2, description="CPUs for the embedded Ray (ignored when joining a cluster).")
    object_store_mb: int = Field(512, description="Object store cap for the embedded Ray.")

    def ensure(self) -> dict:

        return ensure_ray(
            address=self.address, num_cpus=self.num_cpus, object_store_memory=self.object_store_mb * 2**20
        )


class MlflowResource(dg.ConfigurableResource):
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; empty = local sqlite store.")
    experiment: str = "finetune_assets"
    artifact_location: str | None = Field(
        None,
        description="Experiment artifact location; default: a local folder for a local store, and the "
        "server's own (served artifacts) for an http(s) tracking server.",
    )

    def tracker(self) -> Tracker:
        home = default_home()
        uri = self.tracking_uri or default_tracking_uri(home)
        local_artifacts = (
            None if uri.startswith(("http://", "https://")) else str(home / "mlflow" / "artifacts")
        )
        return Tracker(uri, self.experiment, self.artifact_location or local_artifacts)


class RequestLogResource(dg.ConfigurableResource):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the serving log; empty = sqlite under $FINETUNE_ASSETS_HOME/serving.",
    )

    def open(self):
        from finetune_assets.phases.serving.request_log import RequestLog, default_url

        return RequestLog(self.url or default_url(default_home()))


def default_resources() -> dict:
    """Resources read from the environment so a deployment switches by configuration only."""
    return {
        "recipe": RecipeResource(profile=dg.EnvVar("FINETUNE_ASSETS_PROFILE").get_value("demo")),
        "store": ArtifactStore(root=dg.EnvVar("FINETUNE_ASSETS_ARTIFACTS").get_value(None)),
        "ray": RayResource(address=dg.EnvVar("FINETUNE_ASSETS_RAY_ADDRESS").get_value(None)),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI").get_value(None)),
        "request_log": RequestLogResource(url=dg.EnvVar("FINETUNE_ASSETS_REQUEST_LOG").get_value(None)),
    }

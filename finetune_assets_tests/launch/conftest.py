import pytest

from finetune_assets.launch.ray_cluster import ensure_ray, shutdown_ray


@pytest.fixture(scope="package")
def embedded_ray():
    """One embedded loopback Ray for the launch tests (start-up costs seconds), shut down after them."""
    info = ensure_ray(num_cpus=2)
    yield info
    shutdown_ray()

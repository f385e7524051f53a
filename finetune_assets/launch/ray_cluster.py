"""One Ray connection per process: an embedded loopback-only local Ray by default, or a cluster by address.

Embedded Ray is kept private to this process and this machine: gcs/raylet/workers bind 127.0.0.1
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray use the loopback address; passing _node_ip_address is silently
rewritten; the same setting lets a driver join a loopback cluster, e.g. the stack's), no dashboard, a capped
object store (Ray's default takes 5-7 GB), and a private short temp dir (Unix socket paths must stay under 108
characters). Other Ray instances may run on the same machine, so this
module never uses address="auto" and never runs `ray stop`.

Token auth (on by default in Ray 2.60) is set explicitly: RAY_AUTH_MODE from the environment when set,
otherwise ``auth_mode`` ("token" by default; a started head's clients need the same mode and token).
"""

import hashlib
import os
import sys
from pathlib import Path

from finetune_assets.config import default_home
from finetune_assets.launch.ray_node import LOOPBACK

_STATE: dict = {}

# Environment every Ray worker process gets: one BLAS thread unless a task sets its own (train: torch_threads;
# eval: one thread per variant task), so that workers sharing a machine do not oversubscribe its cores.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def default_temp_dir() -> Path:
    """A short private folder for Ray's sockets and logs: /tmp/fa-ray-<hash of user + project home>."""

    key = f"{os.getuid() if hasattr(os, 'getuid') else 0}:{default_home()}"
    return Path("/tmp") / f"fa-ray-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _worker_env() -> dict:
    """WORKER_ENV plus a PYTHONPATH that lets workers import finetune_assets even when it is not installed."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding finetune_assets/
    paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**WORKER_ENV, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int = 512 * 2**20,
    temp_dir: Path | None = None,
    auth_mode: str = "token",
    log_to_driver: bool = False,
) -> dict:
    """Start (or join) Ray once per process and describe it: {address, embedded, num_cpus, temp_dir, ...}.

    address None: embedded local Ray on 127.0.0.1 with ``num_cpus`` (default: all cores). address "host:port":
    join that cluster (never "auto"). A second call returns the existing connection's info.
    """
    if address == "auto":
        raise ValueError("ray address 'auto' could join someone else's cluster: pass an explicit host:port")
    imported = sys.modules.get("ray")
    if imported is not None and imported.is_initialized():
        return _info(imported)

    os.environ.setdefault("RAY_AUTH_MODE", auth_mode)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    loopback = address is None or _host(address) in LOOPBACK
    if loopback:  # this process's node address stays 127.0.0.1 (a cluster on this host: launch.ray_node)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if address is None:
        # Ray starts workers with niceness 15, so the training worker yields to every other process on a busy
        # machine (5-step SmolLM2 SFT: 13.7 s/step niced vs 12.5 at 0). Training is this process's main work.
        os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    if imported is not None:
        # ray reads these settings at import: when it was imported before this call, apply them again. The
        # config refresh is what ray itself does when it enables token auth (authentication_token_setup).
        from ray._private import ray_constants
        from ray._raylet import Config

        Config.initialize("")
        if loopback:
            ray_constants.ENABLE_RAY_CLUSTER = False

    runtime_env = {"env_vars": _worker_env()}
    if address is None:
        temp = Path(temp_dir) if temp_dir else default_temp_dir()
        temp.mkdir(parents=True, exist_ok=True, mode=0o700)
        if len(str(temp)) > 40:
            raise ValueError(
                f"Ray temp dir {temp} is too long: Unix socket paths must stay under 108 characters"
            )
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            _temp_dir=str(temp),
            log_to_driver=log_to_driver,
            runtime_env=runtime_env,
            configure_logging=True,
            logging_level="WARNING",
        )
        _STATE.update(embedded=True, temp_dir=str(temp))
    else:
        ray.init(
            address=address, log_to_driver=log_to_driver, runtime_env=runtime_env, logging_level="WARNING"
        )
        _STATE.update(embedded=False, temp_dir=None)
    return _info(ray)


def _host(address: str) -> str:
    """The host of "host:port" (an IPv6 host in brackets)."""
    return address.rsplit(":", 1)[0].strip("[]")


def _info(ray) -> dict:
    context = ray.get_runtime_context()
    resources = ray.cluster_resources()
    return {
        "address": context.gcs_address,
        "embedded": _STATE.get("embedded"),
        "temp_dir": _STATE.get("temp_dir"),
        "num_cpus": resources.get("CPU", 0),
        "num_gpus": resources.get("GPU", 0),
        "node_ips": sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}),
        # the smallest worker node's CPUs: the most one training worker can be given and still be placed
        # anywhere (a head started with --num-cpus=0 only schedules and does not count)
        "min_node_cpus": min(
            (n["Resources"]["CPU"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")),
            default=0,
        ),
        "auth_mode": os.environ.get("RAY_AUTH_MODE"),
    }


def shutdown_ray() -> None:
    """Disconnect this process (and stop the embedded cluster it started). Never touches other clusters."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    _STATE.clear()

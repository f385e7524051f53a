"""Run a phases.training.train method on Ray Train workers (TorchTrainer), embedded Ray by default.

    summary = run_training(
        "sft",
        {"base_dir": ..., "train_rows": ..., "eval_rows": ..., "cfg": TrainConfig(...), "out_dir": ...},
        ScalingConfig(num_workers=1),
        storage_dir=Path(...),
    )

kwargs are the keyword arguments of phases.training.train.{sft, dpo, kto, orpo, cpt} or phases.training.grpo.grpo
(without ray_context and deepspeed), typed configs included. They travel to the workers as plain data (paths as
strings, pydantic configs as dicts, re-validated in the worker). On GPU workers the DeepSpeed config of
``scaling`` is passed to the method as its ``deepspeed`` argument. The workers write ``out_dir`` on the shared
filesystem (rank 0 saves) and this returns the train_summary.json rank 0 wrote.
"""

import json
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from finetune_assets.config import CptConfig, ScalingConfig, TrainConfig
from finetune_assets.launch.deepspeed import (
    init_distributed_for_deepspeed,
    trainer_deepspeed_arg,
    zero3_init_context,
)
from finetune_assets.launch.ray_cluster import ensure_ray
from finetune_assets.phases.training import grpo, train
from finetune_assets.phases.training.artifacts import SUMMARY_FILE, read_summary, step_log_path

METHODS = ("sft", "dpo", "kto", "orpo", "cpt", "grpo")
# Which keyword arguments are paths / configs, per method (everything else travels as is).
_PATH_KEYS = ("base_dir", "model_dir", "out_dir")
_CONFIG_TYPES = {
    "sft": {"cfg": TrainConfig},
    "dpo": {"cfg": TrainConfig},
    "kto": {"cfg": TrainConfig},
    "orpo": {"cfg": TrainConfig},
    "cpt": {"cfg": CptConfig, "train_cfg": TrainConfig},
    "grpo": {"cfg": TrainConfig},
}


class TrainingError(RuntimeError):
    """Training failed inside a Ray worker; the message carries the worker's traceback."""


def _encode(kwargs: dict) -> dict:
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, BaseModel):
            value = value.model_dump()
        elif isinstance(value, Path):
            value = str(value)
        out[key] = value
    return out


def _decode(method: str, config: dict) -> dict:
    kwargs = dict(config)
    for key in _PATH_KEYS:
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    for key, cls in _CONFIG_TYPES[method].items():
        if kwargs.get(key) is not None:
            kwargs[key] = cls.model_validate(kwargs[key])
    return kwargs


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker: dispatch to phases.training.train.<method> (phases.training.grpo.grpo for
    grpo) with ray_context=True."""
    import torch

    config = dict(config)
    threads = config.pop("cpu_threads", 1)
    if not torch.cuda.is_available():
        # as many torch threads as CPUs Ray reserved for this worker: more would oversubscribe the cores
        # other workers hold (on a busy 2-core box, 2 threads per worker ran up to 9x slower)
        torch.set_num_threads(threads)
    method = config.pop("method")
    run = getattr(grpo if method == "grpo" else train, method)
    ds_config = config.pop("deepspeed", None)
    if ds_config is not None:
        init_distributed_for_deepspeed()  # before the model loads (ZeRO-3 partitions it while loading)
        with zero3_init_context(ds_config):
            run(**_decode(method, config), ray_context=True, deepspeed=ds_config)
        return
    run(**_decode(method, config), ray_context=True)


def cpus_per_worker(scaling: ScalingConfig, cluster: dict) -> int:
    """The CPUs each worker reserves (and its torch threads): the recipe's number, or else an even share of
    the smallest node (every core of this machine for the embedded default's single worker)."""
    if scaling.cpus_per_worker is not None:
        return scaling.cpus_per_worker
    per_node = int(cluster.get("min_node_cpus") or cluster.get("num_cpus") or 1)
    return max(1, per_node // scaling.num_workers) if per_node >= scaling.num_workers else 1


def run_training(
    method: str,
    kwargs: dict,
    scaling: ScalingConfig,
    storage_dir: Path,
    ray_address: str | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train with ``scaling.num_workers`` Ray Train workers; return the train_summary.json rank 0 wrote.

    ``on_step`` gets each logged step ({step, max_steps, loss, learning_rate, ...}) while the job runs.
    Raises TrainingError (with the worker's traceback) when a worker fails, and when the run ends without a
    fresh summary in ``kwargs["out_dir"]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; expected one of {METHODS}")
    if "out_dir" not in kwargs:
        raise ValueError("run_training needs kwargs['out_dir']: the folder the workers write")

    cluster = ensure_ray(ray_address)
    cpus = cpus_per_worker(scaling, cluster)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError
    from ray.train import ScalingConfig as RayScalingConfig
    from ray.train.torch import TorchTrainer

    out_dir = Path(kwargs["out_dir"]).resolve()
    storage = Path(storage_dir).resolve()  # Ray Train needs an absolute storage path
    storage.mkdir(parents=True, exist_ok=True)
    run_name = f"{method}-{out_dir.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "method": method,
            "cpu_threads": cpus,
            "deepspeed": trainer_deepspeed_arg(
                scaling.use_gpu,
                scaling.deepspeed_stage,
                offload_optimizer=scaling.deepspeed_offload_optimizer,
            ),
            **_encode({**kwargs, "out_dir": out_dir}),
        },
        scaling_config=RayScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=RunConfig(
            storage_path=str(storage),
            name=run_name,
            # A failed worker group is restarted up to max_failures times; each attempt resumes from the
            # latest checkpoint (phases.training.train reads ray.train.get_checkpoint()).
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.time()
    try:
        with forward_steps(step_log_path(out_dir), on_step):
            result = trainer.fit()
    except TrainingFailedError as err:
        raise TrainingError(f"{method} training failed on Ray (run {run_name}):\n{err}") from err
    if result.error is not None:
        raise TrainingError(
            f"{method} training failed on Ray (run {run_name}):\n{result.error}"
        ) from result.error
    summary_path = out_dir / SUMMARY_FILE
    if not summary_path.is_file() or summary_path.stat().st_mtime < started - 1:
        raise TrainingError(f"{method} run {run_name} finished but rank 0 wrote no fresh {summary_path}")
    summary = read_summary(out_dir)
    summary["ray"] = {
        "run_name": run_name,
        "storage_path": str(storage),
        "num_workers": scaling.num_workers,
        "use_gpu": scaling.use_gpu,
        "cpus_per_worker": cpus,
        "wall_s": round(time.time() - started, 2),
        # where it ran: the cluster (GCS address) and this driver's Ray job, as the cluster lists it
        "address": cluster["address"],
        "embedded": bool(cluster["embedded"]),
        "job_id": ray.get_runtime_context().get_job_id(),
    }
    return summary


@contextmanager
def forward_steps(path: Path, on_step: Callable[[dict], None] | None, interval_s: float = 2.0):
    """While the body runs, pass every new line of rank 0's step log (artifacts.step_log_path) to ``on_step``,
    from a background thread: the per-step loss reaches the caller's log while the job runs, not after."""
    if on_step is None:
        yield
        return
    offset = path.stat().st_size if path.exists() else 0  # earlier runs' lines are not this run's
    stop = threading.Event()

    def forward() -> None:
        nonlocal offset
        while True:
            finished = stop.wait(interval_s)
            offset = _emit_lines(path, offset, on_step)
            if finished:
                return

    thread = threading.Thread(target=forward, name="forward-steps", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval_s * 3)


def _emit_lines(path: Path, offset: int, on_step: Callable[[dict], None]) -> int:
    if not path.exists():
        return offset
    if path.stat().st_size < offset:  # a new run started the file over
        offset = 0
    with open(path) as src:
        src.seek(offset)
        chunk = src.read()
    complete = chunk[: chunk.rfind("\n") + 1]  # a line still being written waits for the next poll
    for line in complete.splitlines():
        if line.strip():
            on_step(json.loads(line))
    return offset + len(complete.encode())

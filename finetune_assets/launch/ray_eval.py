"""Evaluate model variants as Ray tasks, several at a time (embedded Ray by default), or in this process.

    results = evaluate_variants(
        [{"name": "base", "model_dir": ..., "eval_dir": ..., "cfg": EvalConfig(...), "work_dir": ...}, ...],
        cpus_per_variant=1,      # None: one after another in this process, torch on every core
    )

Each job is the keyword arguments of phases.evaluation.variant.evaluate_variant; a task reserves ``cpus_per_variant``
CPUs (or one GPU with ``use_gpu``) and runs torch with that many threads. Results come back in job order.
Why tasks instead of one loop: decoding a small model is a chain of small matmuls, where one process per core
finishes the same work sooner than one process using every core (bench/eval_parallel_bench.py), and on a
cluster the variants spread over its nodes. The variants' folders must be readable where the tasks run
(one machine, or a shared filesystem, as for training).
"""

from finetune_assets.launch.ray_cluster import ensure_ray
from finetune_assets.phases.evaluation import variant as evaluate
from finetune_assets.phases.inference import llm


class EvaluationError(RuntimeError):
    """A variant's evaluation failed inside a Ray task; the message names the variant and carries the cause."""


def _judge_client(judge: tuple | None):

    return llm.make_client(judge[0], cache_dir=judge[1]) if judge else None


def _evaluate_task(job: dict, threads: int, judge: tuple | None) -> dict:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(threads)  # as many as the CPUs this task reserved
    # the judge client is built where it runs: an HTTP session or a loaded model does not travel
    return evaluate.evaluate_variant(**job, judge_client=_judge_client(judge))


def evaluate_variants(
    jobs: list[dict],
    *,
    cpus_per_variant: int | None = 1,
    use_gpu: bool = False,
    ray_address: str | None = None,
    judge: tuple | None = None,
) -> list[dict]:
    """evaluate_variant(**job) for every job, the results in job order: each a Ray task of
    ``cpus_per_variant`` CPUs, or with None one after another in this process. ``judge``:
    (LLMEndpointConfig, cache folder) of a judge model the evaluation builds its client from.

    Raises EvaluationError naming every variant that failed on Ray (the others still finish)."""
    if cpus_per_variant is None:
        client = _judge_client(judge)  # one for every variant (a judge model loads once)
        return [evaluate.evaluate_variant(**job, judge_client=client) for job in jobs]
    if cpus_per_variant < 1:
        raise ValueError(f"cpus_per_variant must be >= 1 or None, got {cpus_per_variant}")
    ensure_ray(ray_address)
    import ray

    task = ray.remote(num_cpus=cpus_per_variant, num_gpus=1 if use_gpu else 0, max_retries=0)(_evaluate_task)
    refs = [task.remote(job, cpus_per_variant, judge) for job in jobs]
    results, failures = [], []
    for job, ref in zip(jobs, refs, strict=True):
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as err:
            failures.append(f"variant {job.get('name')!r}: {err}")
    if failures:
        raise EvaluationError("evaluation failed on Ray:\n" + "\n".join(failures))
    return results

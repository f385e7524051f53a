"""Variants evaluated as Ray tasks (launch/ray_eval.py) on the embedded loopback Ray: the same numbers as
in-process (cpus_per_variant None), in job order, and a failing variant named in the error."""

import pytest

from finetune_assets.config import EvalConfig, GuardrailsConfig
from finetune_assets.launch.ray_eval import EvaluationError, evaluate_variants
from finetune_assets_tests.phases.evaluation.test_lm_eval_tasks import write_eval_sets

CFG = EvalConfig(
    max_new_tokens=8, batch_size=4, max_glossary_terms=3, max_qa=2, max_perplexity_docs=2,
    decode_speed_prompts=2, decode_speed_tokens=4, bootstrap_resamples=100,
)  # fmt: skip


def _job(name, model_dir, eval_dir, work) -> dict:
    return {
        "name": name, "model_dir": model_dir, "eval_dir": eval_dir, "cfg": CFG, "work_dir": work,
        "embedder": None, "guardrails_cfg": GuardrailsConfig(max_new_tokens=8),
    }  # fmt: skip


def test_ray_tasks_score_like_the_process_in_job_order(embedded_ray, tmp_path, tiny_model_dir, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    jobs = [_job(n, tiny_model_dir, eval_dir, tmp_path / "ray") for n in ("base", "inst")]
    results = evaluate_variants(jobs, cpus_per_variant=1)
    assert [r["variant"] for r in results] == ["base", "inst"]
    (local,) = evaluate_variants(
        [_job("base", tiny_model_dir, eval_dir, tmp_path / "local")], cpus_per_variant=None
    )
    scored = [k for k in local["metrics"] if not k.startswith(("time/", "generation/"))]
    # one torch thread in the task and here (OMP_NUM_THREADS=1): the same model gives the same numbers
    assert {k: results[0]["metrics"][k] for k in scored} == {k: local["metrics"][k] for k in scored}
    assert results[0]["items"] == local["items"]
    assert (tmp_path / "ray" / "inst" / "metrics.json").is_file()


def test_a_failing_variant_is_named(embedded_ray, tmp_path, tiny_model_dir, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    jobs = [_job("dpo", tmp_path / "no-such-model", eval_dir, tmp_path / "work")]
    with pytest.raises(EvaluationError, match="variant 'dpo'"):
        evaluate_variants(jobs, cpus_per_variant=1)
    with pytest.raises(ValueError, match="cpus_per_variant"):
        evaluate_variants(jobs, cpus_per_variant=0)

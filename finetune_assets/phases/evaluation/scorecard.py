"""The eval_reports asset as one call (``score``): every variant evaluated, compared, reported and logged.

``variant_jobs`` describes what each variant evaluation needs; the ``evaluate`` function passed to ``score``
runs them (launch.ray_eval, in process or as Ray tasks: launch/ sits above phases/). ``compare_variants``
then takes their results: forgetting warnings, the promotion decision against the current champion, paired
differences to the base, a review sample for people, the agreement of any labels they returned, and the
report (Markdown, HTML, CSV, PNG). It writes everything under ``out_dir``. ``score`` logs each variant's
metrics to MLflow as its own run and tags its registered model version with them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig, RetrievalConfig
from finetune_assets.phases.evaluation import compare, lm_eval_tasks, promotion, report, review, review_import
from finetune_assets.tracking import Tracker, interval_metrics

# variant jobs (variant_jobs) -> their evaluate_variant results, in job order
Evaluate = Callable[[list[dict]], list[dict]]

PROMOTION_FILE = "promotion.json"


@dataclass(frozen=True)
class Scorecard:
    decision: dict  # promotion.decide_promotion's, also in promotion.json
    warnings: list[str]  # forgetting warnings, also attached to the results
    report: dict  # report.write_report's {markdown, table, paths}
    review_sample: dict  # review.export_review's {paths: {csv, jsonl}, ...}
    results: list[dict]  # every variant's evaluate_variant result, in the order they were asked

    @property
    def files(self) -> list[Path]:
        """Every file the comparison wrote, to attach to the run."""
        return [*self.report["paths"].values(), *self.review_sample["paths"].values()]


def variant_jobs(
    model_dirs: dict[str, Path],
    eval_dir: Path,
    out_dir: Path,
    cfg: EvalConfig,
    *,
    index_dir: Path,
    retrieval_cfg: RetrievalConfig,
    guardrails_cfg: GuardrailsConfig,
    adapter_dirs: dict[str, Path],
) -> list[dict]:
    """One evaluate_variant job per variant ({name: model folder}), all on the same eval sets.
    ``adapter_dirs`` ({name: training asset folder}) are read only when ``cfg.lm_eval_peft``."""
    return [
        {
            "name": name,
            "model_dir": model,
            "eval_dir": eval_dir,
            "cfg": cfg,
            "work_dir": out_dir / "variants",
            "index_dir": index_dir,
            "retrieval_cfg": retrieval_cfg,
            "lm_eval_peft": lm_eval_tasks.adapter_for_lm_eval(adapter_dirs[name])
            if cfg.lm_eval_peft
            else None,
            "guardrails_cfg": guardrails_cfg,
        }
        for name, model in model_dirs.items()
    ]


def compare_variants(
    results: list[dict],
    cfg: EvalConfig,
    out_dir: Path,
    *,
    champion: dict | None,
    versions: dict[str, str | None],
    sets_hash: str,
    labels_dir: Path,
    title: str,
    loss_curves: dict | None = None,
    seed: int = 0,
    eval_run_id: str | None = None,
) -> Scorecard:
    """Decide, compare and report; see the module docstring. ``champion`` is the registry's current
    champion (tracking.Tracker.champion), ``versions`` each variant's registered version."""
    warnings = promotion.attach_forgetting_warnings(results, cfg.forgetting_margin)
    decision = promotion.decide_promotion(
        results,
        primary_metric=cfg.primary_metric,
        higher_is_better=cfg.primary_higher_is_better,
        min_delta=cfg.promotion_min_delta,
        candidates=cfg.promotion_candidates,
        champion=promotion.champion_from_tags(champion, cfg.primary_metric),
        versions=versions,
        sets_hash=sets_hash,
        alpha=cfg.significance_alpha,
        require_significance=cfg.promotion_require_significance,
        n_resamples=cfg.bootstrap_resamples,
    )
    decision["eval_run_id"] = eval_run_id
    before = decision["champion_before"] or {}
    differences = compare.paired_differences(
        results,
        alpha=cfg.significance_alpha,
        champion_variant=before.get("measured_as") if before.get("remeasured") else None,
        n_resamples=cfg.bootstrap_resamples,
    )
    sample = review.export_review(
        review.rows_from_results(results), out_dir / "review", per_variant=cfg.review_sample, seed=seed
    )
    labels = review_import.current_labels(
        review.load_labels(labels_dir), io.read_jsonl(Path(sample["paths"]["jsonl"]))
    )
    built = report.write_report(
        results,
        out_dir,
        title=title,
        promotion=decision,
        loss_curves=loss_curves,
        review=review.agreement(labels) if labels else None,
        differences=differences,
        alpha=cfg.significance_alpha,
    )
    io.write_json(decision, out_dir / PROMOTION_FILE)
    built["paths"]["promotion"] = out_dir / PROMOTION_FILE
    return Scorecard(decision, warnings, built, sample, results)


def score(
    jobs: list[dict],
    out_dir: Path,
    cfg: EvalConfig,
    *,
    evaluate: Evaluate,
    tracker: Tracker,
    run_id: str,
    labels_dir: Path,
    title: str,
    seed: int = 0,
) -> Scorecard:
    """Evaluate every variant job (``variant_jobs``: all on the same eval sets) with ``evaluate``, compare
    them (``compare_variants``, against the registry's champion and versions in ``tracker``) and log it all
    under the MLflow run ``run_id``: each variant's metrics, the report files and whether the gate promoted."""
    variants = [job["name"] for job in jobs]
    results = evaluate(jobs)
    versions = {variant: tracker.latest_version(variant) for variant in variants}
    sets_hash = io.content_hash(jobs[0]["eval_dir"])
    card = compare_variants(
        results,
        cfg,
        out_dir,
        champion=tracker.champion(),
        versions=versions,
        sets_hash=sets_hash,
        labels_dir=labels_dir,
        title=title,
        loss_curves=tracker.training_curves([v for v in variants if v != "base"]),
        seed=seed,
        eval_run_id=run_id,
    )
    for result in results:
        log_variant(tracker, run_id, result, versions[result["variant"]], sets_hash)
    for path in card.files:
        tracker.log_artifact(run_id, path, "report")
    tracker.log_metrics(run_id, {"promotion/promoted": float(card.decision["promoted"])})
    return card


def log_variant(tracker: Tracker, run_id: str, result: dict, version: str | None, sets_hash: str) -> None:
    """The variant's metrics (each interval beside its metric) as its own MLflow run with the per-item
    outcomes attached, and as tags on its registered model version (with the eval sets' hash, so a later
    promotion knows whether the numbers are comparable, and the intervals, for an unpaired comparison)."""
    items = (result.get("files") or {}).get("items")
    tracker.log_variant_metrics(
        run_id,
        result["variant"],
        result["metrics"],
        intervals=result.get("intervals"),
        artifacts=[Path(items)] if items else [],
    )
    if version is None:
        return
    checks = result.get("guardrails", {})
    metrics = {**result["metrics"], **interval_metrics(result.get("intervals"))}
    tags = {f"eval.{k}": v for k, v in metrics.items()}
    tags.update({f"guardrail.{k}": "pass" if c["passed"] else "fail" for k, c in checks.items()})
    passed = all(c["passed"] for c in checks.values())
    tracker.tag_model_version(
        version, {**tags, "guardrails.passed": str(passed).lower(), promotion.SETS_HASH_TAG: sets_hash}
    )

"""The eval_reports asset's comparison as one call: the variants' results in, the decision and report out.

``variant_jobs`` describes what each variant evaluation needs (launch.ray_eval runs them, in process or as
Ray tasks). ``compare_variants`` then takes their results: forgetting warnings, the promotion decision
against the current champion, paired differences to the base, a review sample for people, the agreement of
any labels they returned, and the report (Markdown, HTML, CSV, PNG). It writes everything under ``out_dir``.
"""

from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig, RetrievalConfig
from finetune_assets.phases.evaluation import compare, lm_eval_tasks, promotion, report, review, review_import

PROMOTION_FILE = "promotion.json"


@dataclass(frozen=True)
class Scorecard:
    decision: dict  # promotion.decide_promotion's, also in promotion.json
    warnings: list[str]  # forgetting warnings, also attached to the results
    report: dict  # report.write_report's {markdown, table, paths}
    review_sample: dict  # review.export_review's {paths: {csv, jsonl}, ...}

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
    return Scorecard(decision, warnings, built, sample)

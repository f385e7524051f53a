"""eval_reports: base, INST, DPO and T&R scored on the same eval sets, compared in one report; the promotion
gate and the `champion` registry alias that follows from it."""

import json
import math
from pathlib import Path

import dagster as dg

from finetune_assets import io
from finetune_assets.config import default_home
from finetune_assets.defs.common import artifact_metadata, model_dir, tracked_run
from finetune_assets.defs.data import eval_sets, retrieval_index
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RayResource, RecipeResource
from finetune_assets.defs.training import base_checkpoint, dpo_model, inst_model, tr_model
from finetune_assets.launch.ray_eval import evaluate_variants
from finetune_assets.phases.evaluation import promotion, redteam, review, scorecard

VARIANTS = {"base": "base_checkpoint", "inst": "inst_model", "dpo": "dpo_model", "tr": "tr_model"}


@dg.asset(
    deps=[base_checkpoint, inst_model, dpo_model, tr_model, eval_sets, retrieval_index],
    group_name="evaluation",
    kinds={"markdown", "html"},
)
def eval_reports(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: ArtifactStore,
    mlflow: MlflowResource,
    ray: RayResource,
) -> dg.MaterializeResult:
    """Every variant through lm-eval (domain MC, QA, held-out perplexity), the hallucination index, general
    text perplexity (forgetting), guardrails and cost; a report, a review sample and the promotion decision."""

    profile = recipe.load()
    cfg = profile.eval
    out = store.path("eval_reports")
    configs = {"eval": cfg.model_dump(), "guardrails": profile.guardrails.model_dump()}
    with tracked_run(context, mlflow, configs) as (tracker, run_id):
        jobs = scorecard.variant_jobs(
            {variant: model_dir(store, asset) for variant, asset in VARIANTS.items()},
            store.path("eval_sets"),
            out,
            cfg,
            index_dir=store.path("retrieval_index"),
            retrieval_cfg=profile.retrieval,
            guardrails_cfg=profile.guardrails,
            adapter_dirs={variant: store.path(asset) for variant, asset in VARIANTS.items()},
        )
        card = scorecard.score(
            jobs,
            out,
            cfg,
            evaluate=_evaluator(context, ray, profile, out),
            tracker=tracker,
            run_id=run_id,
            labels_dir=review.labels_dir(default_home()),
            title=f"finetune_assets evaluation ({profile.name} profile)",
            seed=profile.seed,
        )
        for warning in card.warnings:
            context.log.warning(warning)
        findings = redteam.write_findings(card.results, out)  # the next preference_pairs trains on them
        context.log.info(f"red-team findings for the next preference_pairs: {len(io.read_jsonl(findings))}")
        decision, paths = card.decision, card.report["paths"]
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {"variants": len(card.results), "promotion_candidate": decision["candidate"] or "none"},
                report=dg.MetadataValue.md(card.report["markdown_embedded"]),
                plot=dg.MetadataValue.path(str(paths["plot"])),
                html=dg.MetadataValue.path(str(paths["html"])),
                review_sample=dg.MetadataValue.path(str(card.review_sample["paths"]["csv"])),
                promotion=_bullets(decision["reasons"]),
            )
        )


def _evaluator(context, ray: RayResource, profile, out: Path) -> scorecard.Evaluate:
    """evaluate_variants with the recipe's placement: in process, or as Ray tasks on the configured cluster."""
    cfg = profile.eval

    def evaluate(jobs: list[dict]) -> list[dict]:
        where = (
            "in process" if cfg.cpus_per_variant is None else f"as Ray tasks of {cfg.cpus_per_variant} CPU(s)"
        )
        context.log.info(f"evaluating {', '.join(job['name'] for job in jobs)} {where}")
        if cfg.cpus_per_variant is not None:
            ray.ensure()  # the embedded Ray with the resource's settings, or the configured cluster
        return evaluate_variants(
            jobs,
            cpus_per_variant=cfg.cpus_per_variant,
            use_gpu=profile.scaling.use_gpu,
            ray_address=ray.address,
            judge=(cfg.judge, out / "judge_cache") if cfg.judge else None,
        )

    return evaluate


def _bullets(lines: list[str]) -> dg.MetadataValue:
    """A Markdown list of the non-empty ``lines``, for the Dagster UI."""
    return dg.MetadataValue.md("\n".join(f"- {line}" for line in lines if line))


def _decision(store: ArtifactStore) -> dict:
    return json.loads((store.path("eval_reports") / scorecard.PROMOTION_FILE).read_text(encoding="utf-8"))


@dg.asset_check(asset=eval_reports, blocking=True)
def every_variant_scored(store: ArtifactStore) -> dg.AssetCheckResult:
    """The report has a row per variant and every metric in it is a finite number."""
    import csv

    with open(store.path("eval_reports") / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    variants = {row["variant"] for row in rows}
    bad = [
        (row["variant"], key)
        for row in rows
        for key, value in row.items()
        if key != "variant" and value not in ("", None) and not math.isfinite(float(value))
    ]
    return dg.AssetCheckResult(
        passed=variants == set(VARIANTS) and not bad,
        metadata={"variants": sorted(variants), "non_finite": str(bad)},
    )


@dg.asset_check(asset=eval_reports, blocking=True)
def promotion_gate(store: ArtifactStore) -> dg.AssetCheckResult:
    """Passes when a variant beat the champion and held every guardrail. Not better than the champion is a
    warning (nothing to ship, nothing wrong); every candidate failing a guardrail is an error, which blocks
    the champion asset until a person looks."""

    decision = _decision(store)
    gate = decision["gate"]
    return dg.AssetCheckResult(
        passed=gate == promotion.GATE_PASSED,
        severity=dg.AssetCheckSeverity.ERROR if gate == promotion.GATE_UNSAFE else dg.AssetCheckSeverity.WARN,
        metadata={
            "gate": gate,
            "candidate": decision["candidate"] or "none",
            "reasons": _bullets(decision["reasons"]),
        },
    )


@dg.asset(deps=[eval_reports], group_name="deployment", kinds={"mlflow"})
def champion(
    context: dg.AssetExecutionContext, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Moves the MLflow registry alias `champion` to the variant eval_reports approved, when it approved one
    and nothing changed since: the decision is the latest eval_reports materialization's, and the alias still
    points where it did when the decision was taken. Otherwise records why the alias stays."""
    decision = _decision(store)
    event = context.instance.get_latest_materialization_event(eval_reports.key)
    latest = event.asset_materialization.metadata.get("mlflow_run_id") if event else None
    applied = promotion.apply_decision(decision, mlflow.tracker(), getattr(latest, "value", latest))
    if applied.promoted:
        context.log.info(f"champion -> {decision['candidate']} (version {decision['version']})")
    elif applied.stale:
        context.log.warning(f"promotion not applied: {applied.stale}")
    holder = applied.champion
    return dg.MaterializeResult(
        metadata={
            "promoted": applied.promoted,
            "champion_version": holder["version"] if holder else "none",
            "champion_variant": holder["variant"] if holder else "none",
            "reasons": _bullets([*decision["reasons"], applied.stale or ""]),
        }
    )

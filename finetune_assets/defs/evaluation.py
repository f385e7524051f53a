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
from finetune_assets.phases.evaluation import promotion, review, scorecard
from finetune_assets.phases.evaluation.promotion import SETS_HASH_TAG
from finetune_assets.tracking import interval_metrics

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
        where = (
            "in process" if cfg.cpus_per_variant is None else f"as Ray tasks of {cfg.cpus_per_variant} CPU(s)"
        )
        context.log.info(f"evaluating {', '.join(VARIANTS)} {where}")
        if cfg.cpus_per_variant is not None:
            ray.ensure()  # the embedded Ray with the resource's settings, or the configured cluster
        results = evaluate_variants(
            jobs,
            cpus_per_variant=cfg.cpus_per_variant,
            use_gpu=profile.scaling.use_gpu,
            ray_address=ray.address,
            judge=(cfg.judge, out / "judge_cache") if cfg.judge else None,
        )
        versions = {variant: tracker.latest_version(variant) for variant in VARIANTS}
        sets_hash = io.content_hash(store.path("eval_sets"))
        card = scorecard.compare_variants(
            results,
            cfg,
            out,
            champion=tracker.champion(),
            versions=versions,
            sets_hash=sets_hash,
            labels_dir=review.labels_dir(default_home()),
            title=f"finetune_assets evaluation ({profile.name} profile)",
            loss_curves=tracker.training_curves([v for v in VARIANTS if v != "base"]),
            seed=profile.seed,
            eval_run_id=run_id,
        )
        for warning in card.warnings:
            context.log.warning(warning)
        for result in results:
            _log_variant(tracker, run_id, result, versions[result["variant"]], sets_hash)
        for path in card.files:
            tracker.log_artifact(run_id, path, "report")
        decision, paths = card.decision, card.report["paths"]
        tracker.log_metrics(run_id, {"promotion/promoted": float(decision["promoted"])})
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {"variants": len(results), "promotion_candidate": decision["candidate"] or "none"},
                report=dg.MetadataValue.md(card.report["markdown"]),
                plot=dg.MetadataValue.path(str(paths["plot"])),
                html=dg.MetadataValue.path(str(paths["html"])),
                review_sample=dg.MetadataValue.path(str(card.review_sample["paths"]["csv"])),
                promotion=_bullets(decision["reasons"]),
            )
        )


def _log_variant(tracker, run_id: str, result: dict, version: str | None, sets_hash: str) -> None:
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
        version, {**tags, "guardrails.passed": str(passed).lower(), SETS_HASH_TAG: sets_hash}
    )


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
    tracker = mlflow.tracker()
    holder = tracker.champion()
    stale = _stale(context, decision, holder)
    if decision["promoted"] and not stale:
        tracker.set_champion(decision["version"])
        tracker.tag_model_version(decision["version"], {"promotion.reason": decision["reasons"][-1]})
        context.log.info(f"champion -> {decision['candidate']} (version {decision['version']})")
        holder = tracker.champion()
    elif stale:
        context.log.warning(f"promotion not applied: {stale}")
    return dg.MaterializeResult(
        metadata={
            "promoted": bool(decision["promoted"] and not stale),
            "champion_version": holder["version"] if holder else "none",
            "champion_variant": holder["variant"] if holder else "none",
            "reasons": _bullets([*decision["reasons"], stale or ""]),
        }
    )


def _stale(context: dg.AssetExecutionContext, decision: dict, holder: dict | None) -> str | None:
    """Why ``decision`` must not be applied now, or None."""
    event = context.instance.get_latest_materialization_event(eval_reports.key)
    latest = event.asset_materialization.metadata.get("mlflow_run_id") if event else None
    if latest is None or getattr(latest, "value", latest) != decision.get("eval_run_id"):
        return "promotion.json is not the latest eval_reports materialization's decision"
    before = (decision.get("champion_before") or {}).get("version")
    now = holder["version"] if holder else None
    if str(before) != str(now):
        return f"the champion alias moved since the evaluation (was version {before}, now {now})"
    return None

"""Serving assets: what live traffic says, read from the model server's request log (phases.serving)."""

import datetime
import json
import math

import dagster as dg

from finetune_assets import io
from finetune_assets.defs.common import artifact_metadata, tracked_run, warn_quarantined
from finetune_assets.defs.data import eval_sets
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RecipeResource, RequestLogResource
from finetune_assets.io import atomic_dir
from finetune_assets.phases.data import online_feedback as online_feedback_phase
from finetune_assets.phases.serving import ab_report as ab_report_phase

# Feedback is read by the UTC day it was given on; today's partition exists (end_offset=1) so the feedback
# sensor can ingest it before the day is over.
feedback_days = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)


@dg.asset(partitions_def=feedback_days, deps=[eval_sets], group_name="data", kinds={"parquet"})
def online_feedback(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: ArtifactStore,
    mlflow: MlflowResource,
    request_log: RequestLogResource,
) -> dg.MaterializeResult:
    """One day of live feedback as training rows: preferred answers and up/down pairs on one prompt become
    preference pairs, thumbs become KTO rows; deduplicated and decontaminated against eval_sets. The next
    preference_pairs merges every materialized day."""
    profile = recipe.load()
    day = context.partition_key
    log = request_log.open()
    given = log.feedback_of([day])
    responses = log.responses_by_id({f["response_id"] for f in given})
    with tracked_run(context, mlflow, {"request_log": log.url.split("@")[-1]}) as (tracker, run_id):
        raw = online_feedback_phase.from_log(responses, given)
        clean, _ = online_feedback_phase.clean(
            raw,
            store.path("eval_sets"),
            profile.instructions.decontam_ngram,
            profile.instructions.dedup_threshold,
        )
        warn_quarantined(context, clean.quarantine)
        with atomic_dir(store.path("online_feedback", day)) as tmp:  # the day's files together, or none
            online_feedback_phase.write(clean, tmp)
        out = store.path("online_feedback", day)
        tracker.log_metrics(run_id, clean.stats)
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, clean.stats))


@dg.asset(group_name="evaluation", kinds={"markdown"})
def ab_report(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: ArtifactStore,
    mlflow: MlflowResource,
    request_log: RequestLogResource,
) -> dg.MaterializeResult:
    """The served variants on live traffic over the last serving.ab_window_days: approval from feedback,
    error rate and latency p50/p95/p99 with intervals, each challenger tested against the reference."""
    cfg = recipe.load().serving
    log = request_log.open()
    today = datetime.datetime.now(datetime.UTC).date()
    days = [(today - datetime.timedelta(days=i)).isoformat() for i in range(cfg.ab_window_days)]
    responses = log.responses_of(days)
    feedback = [f for f in log.feedback_of(days) if f["response_id"] in {r["id"] for r in responses}]
    with tracked_run(context, mlflow, {"serving": cfg.model_dump()}) as (tracker, run_id):
        report = ab_report_phase.build(responses, feedback, cfg.ab_reference, cfg.ab_alpha)
        text = ab_report_phase.markdown(report)
        out = store.path("ab_report")
        with atomic_dir(out) as tmp:
            io.write_json({**report, "days": days}, tmp / "report.json")
            io.write_text(text, tmp / "report.md")
        tracker.log_metrics(run_id, _ab_metrics(report))
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {"requests": report["requests"], "feedback": report["feedback"], "window_days": len(days)},
                report=dg.MetadataValue.md(text),
                blocked=dg.MetadataValue.json(report["blocked"]),
            )
        )


def _ab_metrics(report: dict) -> dict:
    """ab/<variant>/<measure> (value, and its interval as _low/_high) for MLflow."""
    metrics = {}
    for name, v in report["variants"].items():
        measures = {"approval": v["approval"], "error_rate": v["error_rate"],
                    **{f"latency_{k}_s": q for k, q in v["latency_s"].items()}}  # fmt: skip
        metrics[f"ab/{name}/requests"] = v["requests"]
        for measure, interval in measures.items():
            for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
                if interval[key] is not None and not math.isnan(interval[key]):
                    metrics[f"ab/{name}/{measure}{suffix}"] = interval[key]
    return metrics


@dg.asset_check(asset=ab_report, blocking=True)
def challenger_not_worse(store: ArtifactStore) -> dg.AssetCheckResult:
    """No challenger is significantly worse than the reference on live traffic (approval or error rate)."""
    report = json.loads((store.path("ab_report") / "report.json").read_text())
    reasons = {name: c["blocking"] for name, c in report["comparisons"].items() if c["blocking"]}
    return dg.AssetCheckResult(
        passed=not reasons,
        metadata={
            "reference": report["reference"] or "none",
            "significantly_worse": dg.MetadataValue.json(reasons),
        },
    )

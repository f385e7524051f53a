"""Serving assets: what live traffic says, read from the model server's request log (phases.serving)."""

import dagster as dg

from finetune_assets.defs.common import artifact_metadata, tracked_run, warn_quarantined
from finetune_assets.defs.data import eval_sets
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RecipeResource, RequestLogResource
from finetune_assets.io import atomic_dir
from finetune_assets.phases.data import online_feedback as online_feedback_phase

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

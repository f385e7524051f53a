"""Jobs, the landing sensor (new data drop -> partition + ingest run), the debounced retrain on new data and the
weekly retraining schedule."""

import json
import time

import dagster as dg

from finetune_assets.defs.data import data_drops, raw_corpus
from finetune_assets.defs.resources import ArtifactStore, RecipeResource
from finetune_assets.defs.serving import online_feedback
from finetune_assets.phases.data import corpus

# One process per run: every step shares one embedded Ray (ray.init once per run, not once per asset).
ingest_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(raw_corpus),
    executor_def=dg.in_process_executor,
)
# online_feedback (daily partitions) has a job of its own: the retrain merges the days already ingested.
retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets(raw_corpus).downstream(include_self=False)
    - dg.AssetSelection.assets(online_feedback),
    executor_def=dg.in_process_executor,
)
feedback_job = dg.define_asset_job(
    "ingest_feedback",
    selection=dg.AssetSelection.assets(online_feedback),
    executor_def=dg.in_process_executor,
)


@dg.sensor(job=ingest_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_sensor(context: dg.SensorEvaluationContext, recipe: RecipeResource, store: ArtifactStore):
    """Registers each new file or folder in the landing directory as a data drop and requests its ingest run."""
    landing = store.landing_dir(recipe.load().corpus.landing_dir)
    known = set(context.instance.get_dynamic_partitions(data_drops.name))
    new = [drop for drop in corpus.list_drops(landing) if drop not in known]
    if not new:
        return dg.SkipReason(f"no new data drops in {landing}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"drop:{drop}", partition_key=drop) for drop in new],
        dynamic_partitions_requests=[data_drops.build_add_request(new)],
    )


def debounce(
    cursor: dict | None, new_drops: list[tuple[int, float]], latest_id: int, now: float, window_s: float
):
    """The retrain decision of one sensor tick: (drops the retrain covers, 0 = no retrain now; next cursor).

    ``new_drops``: (storage id, timestamp) of the raw_corpus materializations after ``cursor["seen"]``.
    Without a cursor (the sensor's first tick) everything ingested so far counts as known: only drops that
    arrive while the sensor runs retrain. Drops accumulate in ``pending`` until none has arrived for
    ``window_s`` seconds; then one retrain covers them all.
    """
    if cursor is None:
        return 0, {"seen": latest_id, "pending": 0, "last_ts": None}
    state = dict(cursor)
    if new_drops:
        state.update(
            seen=new_drops[-1][0], pending=state["pending"] + len(new_drops), last_ts=new_drops[-1][1]
        )
    if state["pending"] and now - state["last_ts"] >= window_s:
        return state["pending"], {**state, "pending": 0}
    return 0, state


@dg.sensor(job=retrain_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def retrain_on_new_data(context: dg.SensorEvaluationContext, recipe: RecipeResource):
    """Rebuild everything downstream once new drops have been ingested, debounced: drops that land within
    automation.retrain_debounce_s of each other cause one retrain (the run's tags say how many drops)."""
    window = recipe.load().automation.retrain_debounce_s
    cursor = json.loads(context.cursor) if context.cursor else None
    instance = context.instance
    if cursor is None:
        latest = instance.fetch_materializations(raw_corpus.key, limit=1).records
        new, latest_id = [], latest[0].storage_id if latest else 0
    else:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=raw_corpus.key, after_storage_id=cursor["seen"]),
            limit=1000,
            ascending=True,
        ).records
        new, latest_id = [(r.storage_id, r.timestamp) for r in found], cursor["seen"]
    drops, state = debounce(cursor, new, latest_id, time.time(), window)
    context.update_cursor(json.dumps(state))
    if not drops:
        waiting = state["pending"]
        return dg.SkipReason(
            f"{waiting} ingested drop(s) waiting for {window:.0f} s without a new one"
            if waiting
            else "no new drops"
        )
    return dg.RunRequest(run_key=f"drops-up-to:{state['seen']}", tags={"finetune_assets/drops": str(drops)})


weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

"""Jobs, the landing sensor (new data drop -> partition + ingest run), the feedback sensor (enough new live
feedback -> its days ingested), the debounced retrain on new data (drops or feedback days) and the weekly
retraining schedule."""

import json
import time

import dagster as dg

from finetune_assets.defs.data import data_drops, raw_corpus
from finetune_assets.defs.resources import ArtifactStore, RecipeResource, RequestLogResource
from finetune_assets.defs.serving import online_feedback
from finetune_assets.defs.tuning import hpo_study
from finetune_assets.phases.data import corpus

# One process per run: every step shares one embedded Ray (ray.init once per run, not once per asset).
ingest_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(raw_corpus),
    executor_def=dg.in_process_executor,
)
# online_feedback (daily partitions) has a job of its own: the retrain merges the days already ingested.
# hpo_study is started on purpose (its trials are training runs), never by a retrain.
retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets(raw_corpus).downstream(include_self=False)
    - dg.AssetSelection.assets(online_feedback)
    - dg.AssetSelection.assets(hpo_study),
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


# What counts as new data for the retrain: an ingested drop, or an ingested day of live feedback.
_NEW_DATA = (raw_corpus.key, online_feedback.key)


@dg.sensor(job=retrain_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def retrain_on_new_data(context: dg.SensorEvaluationContext, recipe: RecipeResource):
    """Rebuild everything downstream once new drops (raw_corpus) or feedback days (online_feedback) have been
    ingested, debounced: materializations within automation.retrain_debounce_s of each other cause one
    retrain (the run's tags say how many)."""
    window = recipe.load().automation.retrain_debounce_s
    cursor = json.loads(context.cursor) if context.cursor else None
    instance = context.instance
    if cursor is None:
        latest = [r for key in _NEW_DATA for r in instance.fetch_materializations(key, limit=1).records]
        new, latest_id = [], max((r.storage_id for r in latest), default=0)
    else:
        found = [
            r
            for key in _NEW_DATA
            for r in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_storage_id=cursor["seen"]),
                limit=1000,
                ascending=True,
            ).records
        ]
        found.sort(key=lambda r: r.storage_id)
        new, latest_id = [(r.storage_id, r.timestamp) for r in found], cursor["seen"]
    drops, state = debounce(cursor, new, latest_id, time.time(), window)
    context.update_cursor(json.dumps(state))
    if not drops:
        waiting = state["pending"]
        return dg.SkipReason(
            f"{waiting} ingested drop(s) or feedback day(s) waiting for {window:.0f} s without a new one"
            if waiting
            else "no new drops or feedback"
        )
    return dg.RunRequest(run_key=f"drops-up-to:{state['seen']}", tags={"finetune_assets/drops": str(drops)})


def feedback_due(cursor: dict | None, new: list[tuple[float, str]], latest: float, minimum: int):
    """The feedback sensor's decision: (days to ingest, [] = not yet; next cursor).

    ``new``: (created, day) of the feedback given after ``cursor["after"]``, oldest first; ``latest``: the
    newest feedback time in the log. Without a cursor (the first tick) what is logged so far is known. New
    feedback accumulates per day until ``minimum`` of it is pending; then every pending day is ingested.
    """
    if cursor is None:
        return [], {"after": latest, "pending": {}}
    state = {"after": cursor["after"], "pending": dict(cursor["pending"])}
    for created, day in new:
        state["pending"][day] = state["pending"].get(day, 0) + 1
        state["after"] = max(state["after"], created)
    if sum(state["pending"].values()) >= minimum:
        return sorted(state["pending"]), {**state, "pending": {}}
    return [], state


@dg.sensor(job=feedback_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def retrain_on_feedback(
    context: dg.SensorEvaluationContext, recipe: RecipeResource, request_log: RequestLogResource
):
    """Once serving.feedback_retrain_min new ratings or preferred answers are in the request log, ingest the
    days they were given on (online_feedback); retrain_on_new_data then retrains on them."""
    minimum = recipe.load().serving.feedback_retrain_min
    cursor = json.loads(context.cursor) if context.cursor else None
    log = request_log.open()
    after = cursor["after"] if cursor else 0.0
    new = [(r["created"], r["day"]) for r in log.rows("feedback", lambda t: t.c.created > after)]
    new.sort()
    latest = new[-1][0] if new else after
    days, state = feedback_due(cursor, new, latest, minimum)
    context.update_cursor(json.dumps(state))
    if not days:
        return dg.SkipReason(
            f"{sum(state['pending'].values())} of {minimum} new feedback needed for a retrain"
        )
    return [dg.RunRequest(run_key=f"feedback:{day}:{state['after']}", partition_key=day) for day in days]


weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

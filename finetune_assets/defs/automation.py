"""Jobs, the landing sensor (new data drop -> partition + ingest run) and the weekly retraining schedule."""

import dagster as dg

from finetune_assets.defs.data import data_drops, raw_corpus
from finetune_assets.defs.resources import ArtifactStore, RecipeResource
from finetune_assets.phases.data import corpus

# One process per run: every step shares one embedded Ray (ray.init once per run, not once per asset).
ingest_job = dg.define_asset_job(
    "ingest_drop",
    selection=dg.AssetSelection.assets(raw_corpus),
    executor_def=dg.in_process_executor,
)
retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets(raw_corpus).downstream(include_self=False),
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


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_job=retrain_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def retrain_on_new_data(context: dg.RunStatusSensorContext):
    """After a drop is ingested, rebuild everything downstream (opt-in: start it in the UI)."""
    return dg.RunRequest(run_key=f"after:{context.dagster_run.run_id}")


weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

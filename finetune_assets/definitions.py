"""The Dagster code location: every asset, check, job, sensor and schedule with their default resources."""

import dagster as dg

from finetune_assets.defs import automation, data, evaluation, serving, training, tuning
from finetune_assets.defs.resources import default_resources

all_assets = dg.load_assets_from_modules([data, serving, training, tuning, evaluation])

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=[
        data.corpus_not_empty,
        data.no_exact_duplicates,
        data.no_pii_left,
        evaluation.every_variant_scored,
        evaluation.promotion_gate,
        serving.challenger_not_worse,
    ],
    jobs=[automation.ingest_job, automation.retrain_job, automation.feedback_job],
    sensors=[automation.landing_sensor, automation.retrain_on_new_data, automation.retrain_on_feedback],
    schedules=[automation.weekly_retrain],
    resources=default_resources(),
    executor=dg.in_process_executor,
)

"""The landing sensor, the weekly schedule and the code location's shape."""

import datetime as dt
import time

import dagster as dg

from finetune_assets.definitions import defs
from finetune_assets.defs import automation
from finetune_assets.defs.automation import (
    debounce,
    landing_sensor,
    retrain_job,
    retrain_on_new_data,
    weekly_retrain,
)
from finetune_assets.defs.data import data_drops
from finetune_assets_tests.defs.conftest import EXPECTED_ASSETS, ingest_landing


def test_code_location_has_all_fourteen_assets_with_lineage():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == EXPECTED_ASSETS
    parents = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert parents["dedup_corpus"] == {"raw_corpus"}
    assert parents["dpo_model"] == {"inst_model", "preference_pairs"}
    assert {"base_checkpoint", "inst_model", "dpo_model", "tr_model", "eval_sets"} <= parents["eval_reports"]
    assert parents["tr_model"] >= {"dpo_model", "retrieval_index", "instruction_set"}


def test_landing_sensor_registers_new_drops_and_requests_their_runs(fa_home, resources, instance):
    landing = fa_home / "landing"
    (landing / "drop-a").mkdir(parents=True)
    (landing / "drop-a" / "doc.txt").write_text("some text " * 50)
    (landing / "drop-b.jsonl").write_text('{"text": "x"}\n')
    context = dg.build_sensor_context(instance=instance, resources=resources)
    result = landing_sensor(context)
    assert sorted(r.partition_key for r in result.run_requests) == ["drop-a", "drop-b.jsonl"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["drop-a", "drop-b.jsonl"]

    # build_sensor_context does not apply partition requests: apply them as the daemon would.
    instance.add_dynamic_partitions(data_drops.name, ["drop-a", "drop-b.jsonl"])
    again = landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(again, dg.SkipReason)

    (landing / "drop-c").mkdir()
    third = landing_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert [r.partition_key for r in third.run_requests] == ["drop-c"]


def test_weekly_schedule_requests_a_retrain_run():
    monday = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
    data = weekly_retrain.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=monday))
    assert len(data.run_requests) == 1
    assert weekly_retrain.job_name == retrain_job.name
    assert weekly_retrain.cron_schedule == "0 3 * * 1"


def test_launchpad_picks_another_recipes_stage_and_overrides_it():
    from finetune_assets.defs.resources import RecipeResource
    from finetune_assets.defs.training import TrainOverrides

    run_recipe = RecipeResource(profile="smoke")
    assert TrainOverrides().stage(run_recipe, "dpo") == run_recipe.load().dpo
    chosen = TrainOverrides(recipe="demo-kto", max_steps=3).stage(run_recipe, "dpo")
    assert (chosen.preference_method, chosen.max_steps) == ("kto", 3)


def test_debounce_waits_for_a_quiet_window_and_retrains_once_for_a_burst():
    fired, state = debounce(None, [], latest_id=7, now=100.0, window_s=60)
    assert fired == 0 and state["seen"] == 7  # what was ingested before the sensor ran is known, not new
    fired, state = debounce(state, [(8, 100.0), (9, 110.0)], 7, now=111.0, window_s=60)
    assert fired == 0 and state["pending"] == 2
    fired, state = debounce(state, [(10, 150.0)], 9, now=160.0, window_s=60)  # a third drop resets the wait
    assert fired == 0 and state["pending"] == 3
    fired, state = debounce(state, [], 10, now=209.0, window_s=60)
    assert fired == 0
    fired, state = debounce(state, [], 10, now=210.0, window_s=60)
    assert fired == 3 and state["pending"] == 0 and state["seen"] == 10
    assert debounce(state, [], 10, now=999.0, window_s=60)[0] == 0  # nothing new: no second retrain


def test_retrain_sensor_requests_one_run_for_drops_ingested_within_the_window(
    fa_home, resources, instance, monkeypatch
):
    landing = fa_home / "landing"
    for name in ("drop-a", "drop-b", "drop-c"):
        (landing / name).mkdir(parents=True)
        (landing / name / "doc.txt").write_text(f"{name} holds documentation text for the corpus. " * 40)
    ingest_landing(instance, resources, landing, ["drop-a"])

    def tick(cursor):
        context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        return retrain_on_new_data(context), context.cursor

    first, cursor = tick(None)
    assert isinstance(first, dg.SkipReason)  # drop-a was there before the sensor: not new
    ingest_landing(instance, resources, landing, ["drop-b", "drop-c"])
    waiting, cursor = tick(cursor)
    assert (
        isinstance(waiting, dg.SkipReason)
        and "2 ingested drop(s) or feedback day(s) waiting" in waiting.skip_message
    )

    later = time.time() + 21  # smoke's automation.retrain_debounce_s is 20
    monkeypatch.setattr(automation.time, "time", lambda: later)
    request, cursor = tick(cursor)
    assert isinstance(request, dg.RunRequest) and request.tags["finetune_assets/drops"] == "2"
    again, _ = tick(cursor)
    assert isinstance(again, dg.SkipReason)

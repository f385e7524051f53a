"""The landing sensor, the weekly schedule and the code location's shape."""

import datetime as dt

import dagster as dg

from finetune_assets.definitions import defs
from finetune_assets.defs.automation import landing_sensor, retrain_job, weekly_retrain
from finetune_assets.defs.data import data_drops
from finetune_assets_tests.defs.conftest import EXPECTED_ASSETS


def test_code_location_has_all_twelve_assets_with_lineage():
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

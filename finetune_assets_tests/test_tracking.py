"""MLflow lineage: child runs under a parent per pipeline run, dataset inputs, registered versions."""

import time
from pathlib import Path

import pytest

from finetune_assets.tracking import REGISTERED_MODEL, Tracker, interval_metrics


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "test", str(tmp_path / "artifacts"))


def test_asset_runs_share_a_parent_and_record_inputs(tracker: Tracker, tmp_path: Path):
    data = tmp_path / "data.parquet"
    data.write_bytes(b"rows")
    with tracker.asset_run("dagster-run-1", "inst_model") as first:
        tracker.log_params(first, {"train": {"lr": 0.1}})
        tracker.log_metric_history(first, "train_loss", [3.0, 2.0, 1.0])
        tracker.log_input(first, "instruction_set", data, "0123abcd")
    with tracker.asset_run("dagster-run-1", "dpo_model") as second:
        pass
    runs = [tracker.client.get_run(r) for r in (first, second)]
    assert runs[0].data.tags["mlflow.parentRunId"] == runs[1].data.tags["mlflow.parentRunId"]
    assert runs[0].data.params["train.lr"] == "0.1"
    history = tracker.client.get_metric_history(first, "train_loss")
    assert [m.value for m in history] == [3.0, 2.0, 1.0]
    dataset = runs[0].inputs.dataset_inputs[0].dataset
    assert (dataset.name, dataset.digest) == ("instruction_set", "0123abcd")
    assert runs[0].info.status == "FINISHED"
    parent = tracker.client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED", "the parent run is closed with its children"


def test_failed_asset_run_is_marked_failed(tracker: Tracker):
    with pytest.raises(RuntimeError), tracker.asset_run("dagster-run-2", "inst_model") as run_id:
        raise RuntimeError("training diverged")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert tracker.client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "FAILED"


def test_each_variant_is_a_registered_version_with_eval_tags(tracker: Tracker, tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    with tracker.asset_run("dagster-run-3", "inst_model") as run_id:
        inst = tracker.register_model("inst", model, run_id)
        dpo = tracker.register_model("dpo", model, run_id)
    tracker.tag_model_version(inst, {"eval.acc": 0.5})
    assert tracker.latest_version("inst") == inst and tracker.latest_version("dpo") == dpo != inst
    assert tracker.client.get_model_version(REGISTERED_MODEL, inst).tags["eval.acc"] == "0.5"
    assert tracker.latest_version("tr") is None


def test_metric_history_and_training_curves_follow_the_latest_version(tracker: Tracker, tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    with tracker.asset_run("dagster-run-4", "inst_model") as old_run:
        tracker.log_metric_history(old_run, "train_loss", [9.0, 8.0])
        tracker.register_model("inst", model, old_run)
    with tracker.asset_run("dagster-run-5", "inst_model") as inst_run:
        tracker.log_metric_history(inst_run, "train_loss", [(10, 2.0), (5, 3.0), (20, 1.5)])  # out of order
        tracker.log_metric_history(inst_run, "train/grad_norm", [(5, 0.9), (10, 0.4)])
        inst = tracker.register_model("inst", model, inst_run)
    with tracker.asset_run("dagster-run-5", "dpo_model") as dpo_run:
        tracker.log_metric_history(dpo_run, "train/loss", [(1, 0.7), (2, 0.6)])
        tracker.register_model("dpo", model, dpo_run)
    with tracker.asset_run("dagster-run-5", "tr_model") as tr_run:
        tracker.register_model("tr", model, tr_run)  # a version, but no per-step history

    assert tracker.metric_history(inst_run, "train_loss") == [(5, 3.0), (10, 2.0), (20, 1.5)]
    assert tracker.metric_history(inst_run, "missing") == []
    assert tracker.version_run_id(inst) == inst_run and tracker.version_run_id("999") is None

    curves = tracker.training_curves(["base", "inst", "dpo", "tr"], keys=("train/loss", "train/grad_norm"))
    assert curves == {
        "inst": {"train/loss": [(5, 3.0), (10, 2.0), (20, 1.5)], "train/grad_norm": [(5, 0.9), (10, 0.4)]},
        "dpo": {"train/loss": [(1, 0.7), (2, 0.6)]},
    }, "latest-inst is the second run; base has no version and tr no history"
    assert tracker.training_curves(["inst"]) == {"inst": {"train/loss": [(5, 3.0), (10, 2.0), (20, 1.5)]}}


def test_champion_alias_moves_with_set_champion(tracker: Tracker, tmp_path: Path):
    assert tracker.champion() is None, "no registered model yet"
    model = tmp_path / "model"
    model.mkdir()
    with tracker.asset_run("dagster-run-6", "inst_model") as run_id:
        inst = tracker.register_model("inst", model, run_id, tags={"method": "sft"})
        dpo = tracker.register_model("dpo", model, run_id)
    assert tracker.champion() is None, "registered, but nothing promoted"
    tracker.set_champion(inst)
    champion = tracker.champion()
    assert champion["version"] == inst and champion["variant"] == "inst"
    assert champion["tags"]["method"] == "sft"
    tracker.set_champion(dpo)
    assert (tracker.champion()["version"], tracker.champion()["variant"]) == (dpo, "dpo")
    assert tracker.latest_version("inst") == inst, "latest-<variant> aliases are left alone"


def log_pipeline(tracker: Tracker, pipeline: str, scores: dict[str, float]) -> None:
    with tracker.asset_run(pipeline, "eval_reports") as run_id:
        for variant, score in scores.items():
            tracker.log_variant_metrics(
                run_id, variant, {"hallucination/index": score, "perplexity/token": 10.0}
            )
            time.sleep(0.01)  # distinct start times: "newest" is well defined


def test_compare_table_rows_per_pipeline_run_and_variant(tracker: Tracker):
    assert tracker.compare_table() == []
    log_pipeline(tracker, "run-old", {"base": 0.1, "inst": 0.2})
    log_pipeline(tracker, "run-mid", {"base": 0.1, "inst": 0.3, "dpo": 0.4})
    log_pipeline(tracker, "run-new", {"base": 0.1, "tr": 0.5})

    rows = tracker.compare_table()
    assert [(r["pipeline_run"], r["variant"]) for r in rows] == [("run-new", "base"), ("run-new", "tr")]
    assert rows[1]["hallucination/index"] == 0.5 and rows[1]["perplexity/token"] == 10.0
    assert rows[0]["started"] <= rows[1]["started"] and "T" in rows[0]["started"]

    two = tracker.compare_table(last=2, metrics=["hallucination/index", "missing/metric"])
    assert [(r["pipeline_run"], r["variant"]) for r in two] == [
        ("run-new", "base"),
        ("run-new", "tr"),
        ("run-mid", "base"),
        ("run-mid", "inst"),
        ("run-mid", "dpo"),
    ]
    assert set(two[0]) == {"pipeline_run", "started", "variant", "hallucination/index", "missing/metric"}
    assert two[0]["missing/metric"] is None

    chosen = tracker.compare_table(pipeline_run_ids=["run-old", "run-new"])
    assert [r["pipeline_run"] for r in chosen] == ["run-new", "run-new", "run-old", "run-old"]
    assert [r["hallucination/index"] for r in chosen if r["pipeline_run"] == "run-old"] == [0.1, 0.2]
    assert tracker.compare_table(pipeline_run_ids=["no-such-run"]) == []


def test_variant_run_logs_intervals_beside_metrics_and_attaches_artifacts(tracker: Tracker, tmp_path: Path):
    items = tmp_path / "items.json"
    items.write_text('{"hallucination/index": {"g0": 1.0}}')
    intervals = {"hallucination/index": {"value": 0.5, "low": 0.24, "high": 0.76, "n": 10}}
    assert interval_metrics(intervals) == {
        "hallucination/index/ci_low": 0.24,
        "hallucination/index/ci_high": 0.76,
    }
    with tracker.asset_run("dagster-run-ci", "eval_reports") as run_id:
        variant_run = tracker.log_variant_metrics(
            run_id, "inst", {"hallucination/index": 0.5}, intervals=intervals, artifacts=[items]
        )
    logged = tracker.client.get_run(variant_run).data.metrics
    assert logged == {
        "hallucination/index": 0.5,
        "hallucination/index/ci_low": 0.24,
        "hallucination/index/ci_high": 0.76,
    }
    assert [a.path for a in tracker.client.list_artifacts(variant_run)] == ["items.json"]

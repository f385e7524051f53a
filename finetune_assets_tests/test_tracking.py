"""MLflow lineage: child runs under a parent per pipeline run, dataset inputs, registered versions."""

from pathlib import Path

import pytest

from finetune_assets.tracking import REGISTERED_MODEL, Tracker


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

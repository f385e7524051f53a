"""phases.training.stages: each model asset's stage and the shared reuse-or-train-then-register step, driven
with a fake runner (no Ray) and a real MLflow tracker on sqlite."""

import json
from pathlib import Path

import pytest

from finetune_assets import io
from finetune_assets.config import ModelConfig, ScalingConfig, TrainConfig
from finetune_assets.phases.data import preference_set
from finetune_assets.phases.data.instruction_set import RECORDS_FILE
from finetune_assets.phases.training import stages
from finetune_assets.phases.training.artifacts import SUMMARY_FILE
from finetune_assets.tracking import Tracker
from finetune_assets_tests.phases.training.test_train import FAST


class FakeRunner:
    """Stands in for launch.ray_train.run_training: records each call and writes what a finished run leaves
    (merged folder + train_summary.json)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, method: str, kwargs: dict) -> dict:
        self.calls.append((method, kwargs))
        out = Path(kwargs["out_dir"])
        (out / "merged").mkdir(parents=True, exist_ok=True)
        (out / "merged" / "config.json").write_text("{}")
        summary = {
            "losses": [2.0, 1.5, 1.0],
            "first_loss": 2.0,
            "last_loss": 1.0,
            "steps": 3,
            "method": method,
        }
        (out / SUMMARY_FILE).write_text(json.dumps(summary))
        return summary


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stages", str(tmp_path / "artifacts"))


def _run(tracker, name: str) -> str:
    return tracker.client.create_run(tracker.experiment_id, run_name=name).info.run_id


def test_a_second_run_on_the_same_inputs_reuses_the_model_and_a_changed_row_retrains(
    tmp_path, tiny_model_dir, tiny_chat_rows, tracker
):
    rows = [dict(r, split="validation" if i == 0 else "train") for i, r in enumerate(tiny_chat_rows)]
    io.write_records_parquet(rows, tmp_path / "instruction_set" / RECORDS_FILE)
    stage = stages.inst_stage(tmp_path / "instruction_set", start_dir=tiny_model_dir, cfg=FAST)
    assert (len(stage.data["train_rows"]), len(stage.data["eval_rows"])) == (len(rows) - 1, 1)
    runner, out = FakeRunner(), tmp_path / "inst_model"

    first = stages.train_variant(
        stage, out, ScalingConfig(), run=runner, tracker=tracker, run_id=_run(tracker, "a")
    )
    assert not first.reused and runner.calls[0][0] == "sft"
    assert runner.calls[0][1]["base_dir"] == str(tiny_model_dir)
    assert tracker.latest_version("inst") == first.model_version
    assert json.loads((out / "training_key.json").read_text())["training_key"] == first.training_key

    again = stages.train_variant(
        stage, out, ScalingConfig(), run=runner, tracker=tracker, run_id=_run(tracker, "b")
    )
    assert again.reused and len(runner.calls) == 1
    assert (again.model_version, again.training_key) == (first.model_version, first.training_key)

    rows[1]["messages"][-1]["content"] += " Changed."
    io.write_records_parquet(rows, tmp_path / "instruction_set" / RECORDS_FILE)
    changed = stages.inst_stage(tmp_path / "instruction_set", start_dir=tiny_model_dir, cfg=FAST)
    run_id = _run(tracker, "c")
    third = stages.train_variant(changed, out, ScalingConfig(), run=runner, tracker=tracker, run_id=run_id)
    assert not third.reused and len(runner.calls) == 2 and third.model_version != first.model_version
    logged = tracker.client.get_run(run_id).data
    assert logged.metrics["reused"] == 0 and logged.params["method"] == "sft"
    assert logged.params["training_key"] == third.training_key


def test_dpo_continues_the_model_and_kto_splits_each_pair_and_adds_binary_feedback(tmp_path, tiny_model_dir):
    pairs = [
        {
            "id": f"p{i}",
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
        for i in range(3)
    ]
    binary = [
        {
            "prompt": [{"role": "user", "content": "b"}],
            "completion": [{"role": "assistant", "content": "ok"}],
            "label": True,
        }
    ]
    io.write_records_parquet(pairs, tmp_path / preference_set.PAIRS_FILE)
    io.write_records_parquet(binary, tmp_path / preference_set.BINARY_FILE)

    dpo = stages.dpo_stage(tmp_path, start_dir=tiny_model_dir, cfg=FAST)
    assert dpo.method == "dpo" and len(dpo.data["rows"]) == 3
    assert dpo.method_kwargs(tmp_path / "out")["model_dir"] == str(tiny_model_dir)

    kto = stages.dpo_stage(
        tmp_path, start_dir=tiny_model_dir, cfg=FAST.model_copy(update={"preference_method": "kto"})
    )
    labels = [row["label"] for row in kto.data["rows"]]
    assert kto.method == "kto" and sorted(labels) == [False] * 3 + [True] * 4


def test_base_checkpoint_reads_the_corpus_only_when_it_needs_it(
    tmp_path, tiny_model_dir, tiny_corpus, tracker
):
    read = []

    def documents():
        read.append(1)
        return [{"text": t} for t in tiny_corpus]

    runner = FakeRunner()

    def resolve(cfg: ModelConfig, out):
        return stages.base_checkpoint(
            cfg, out, documents=documents, cpt_train_cfg=FAST, seed=0,
            run=runner, tracker=tracker, run_id=_run(tracker, out.name),
        )  # fmt: skip

    made = resolve(ModelConfig(source="local", path=str(tiny_model_dir)), tmp_path / "base")
    assert not read and not runner.calls and (made.out_dir / "config.json").is_file()
    assert made.info["source"] == "local" and tracker.latest_version("base") == made.model_version

    cpt = ModelConfig(source="local", path=str(tiny_model_dir), cpt={"enabled": True})
    continued = resolve(cpt, tmp_path / "cpt" / "base")
    method, kwargs = runner.calls[0]
    assert read and method == "cpt" and kwargs["corpus_texts"] == list(tiny_corpus)
    assert kwargs["base_dir"] == str(tmp_path / "cpt" / "resolved") and continued.info["cpt_last_loss"] == 1.0


def test_ray_tags_say_where_a_run_trained():
    summary = {"ray": {"address": "10.0.0.5:6379", "embedded": False, "job_id": "02000000"}}
    assert stages.ray_tags(summary) == {
        "ray_address": "10.0.0.5:6379", "ray_job_id": "02000000", "ray_cluster": "external"
    }  # fmt: skip
    assert stages.ray_tags({"steps": 3}) == {}  # a runner that is not Ray's (the tests' fake one)


def test_mix_weights_resample_each_named_source_and_leave_the_rest():
    from finetune_assets.phases.training.stages import mix_by_source, sft_data

    rows = [{"id": f"{g}{i}", "generator": g, "split": "train"} for g in "abcd" for i in range(10)]
    rows += [{"id": f"v{i}", "generator": "a", "split": "validation"} for i in range(3)]
    data = sft_data(rows, {"a": 2.0, "b": 0.5, "c": 0.0}, seed=1)
    counts = {g: sum(r["generator"] == g for r in data["train_rows"]) for g in "abcd"}
    assert counts == {"a": 20, "b": 5, "c": 0, "d": 10}
    assert len(data["eval_rows"]) == 3, "the validation split is never resampled"
    assert mix_by_source(rows[:40], {"b": 0.5}, seed=1) == mix_by_source(rows[:40], {"b": 0.5}, seed=1)
    assert sft_data(rows)["train_rows"] == rows[:40], "no weights: the train split as it is"
    with pytest.raises(ValueError, match="does not have"):
        mix_by_source(rows, {"nope": 1.0})
    with pytest.raises(ValueError, match="mix_weights must be >= 0"):
        TrainConfig(mix_weights={"a": -1.0})

"""phases.training.artifacts: the reuse key of a run and the summary's edge means of the loss curve."""

import json

from finetune_assets.phases.training.artifacts import SUMMARY_FILE, edge_mean
from finetune_assets_tests.phases.training.test_train import FAST


def test_training_key_changes_with_every_input_and_reuse_needs_an_intact_folder(tmp_path, tiny_model_dir):
    import shutil

    from finetune_assets.config import ScalingConfig
    from finetune_assets.phases.training.artifacts import REUSE_FILE, reusable, training_key

    data = {"train_rows": [{"messages": [{"role": "user", "content": "hi"}]}]}
    key = training_key("sft", tiny_model_dir, data, FAST, ScalingConfig())
    assert key == training_key("sft", tiny_model_dir, data, FAST, ScalingConfig())
    other_model = shutil.copytree(tiny_model_dir, tmp_path / "other")
    (other_model / "config.json").write_text((other_model / "config.json").read_text() + " ")
    variants = [
        training_key("dpo", tiny_model_dir, data, FAST, ScalingConfig()),
        training_key("sft", other_model, data, FAST, ScalingConfig()),
        training_key("sft", tiny_model_dir, {"train_rows": []}, FAST, ScalingConfig()),
        training_key("sft", tiny_model_dir, data, FAST.model_copy(update={"max_steps": 3}), ScalingConfig()),
        training_key("sft", tiny_model_dir, data, FAST, ScalingConfig(num_workers=2)),
    ]
    assert len({key, *variants}) == 6
    out = tmp_path / "out"
    (out / "merged").mkdir(parents=True)
    (out / SUMMARY_FILE).write_text("{}")
    (out / REUSE_FILE).write_text(json.dumps({"training_key": key, "model_version": "3"}))
    assert reusable(out, key)["model_version"] == "3" and reusable(out, variants[0]) is None
    shutil.rmtree(out / "merged")
    assert reusable(out, key) is None


def test_edge_mean_averages_a_tenth_of_the_curve_at_each_end():
    curve = [4.0, 2.0] + [1.0] * 16 + [0.5, 3.5]  # 20 points: 2 at each end
    assert edge_mean(curve, first=True) == 3.0
    assert edge_mean(curve, first=False) == 2.0
    assert edge_mean([7.0], first=False) == 7.0
    assert edge_mean([1.0] * 200, first=True) == 1.0  # capped at 5 points
    assert edge_mean([], first=True) is None

"""Stage settings act: learning rates follow the scheduler's formula, epochs set the length, early stopping
stops and the best evaluated checkpoint is the result. Tiny random model, real trl SFT."""

import math

import pytest
from transformers import TrainerCallback

from finetune_assets.config import ConfigError, TrainConfig
from finetune_assets.phases.training.train import sft
from finetune_assets.recipe import validate_profile

BASE = {"max_steps": 10, "learning_rate": 1e-2, "per_device_batch_size": 4, "lora_dropout": 0.0, "max_length": 128,
        "checkpoint_steps": 0, "precision": "fp32"}  # fmt: skip


class Logs(TrainerCallback):
    """Every log line with its global step (a step's line holds the learning rate that step used)."""

    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append({"step": state.global_step, **(logs or {})})


def _train(tmp_path, tiny_model_dir, rows, eval_rows=(), **settings):
    logs = Logs()
    summary = sft(tiny_model_dir, rows, list(eval_rows), TrainConfig(**{**BASE, **settings}), tmp_path / "out",
                  callbacks=[logs])  # fmt: skip
    return summary, logs.rows


def _lr_by_step(rows) -> dict[int, float]:
    return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r and "loss" in r}


def test_cosine_with_warmup_steps_follows_the_formula(tmp_path, tiny_model_dir, tiny_chat_rows):
    summary, rows = _train(tmp_path, tiny_model_dir, tiny_chat_rows, lr_scheduler="cosine", warmup_steps=3)
    total, warm, peak = 10, 3, 1e-2

    def expected(step):  # the rate step `step` (from 1) trained at: the schedule after step - 1 updates
        done = step - 1
        if done < warm:
            return peak * done / warm
        return peak * 0.5 * (1 + math.cos(math.pi * (done - warm) / (total - warm)))

    lrs = _lr_by_step(rows)
    assert sorted(lrs) == list(range(1, total + 1)) and summary["steps"] == total
    for step, lr in lrs.items():
        assert lr == pytest.approx(expected(step), rel=1e-6, abs=1e-12), (step, lr)


def test_linear_with_a_warmup_ratio_and_constant_rates(tmp_path, tiny_model_dir, tiny_chat_rows):
    _, rows = _train(tmp_path / "linear", tiny_model_dir, tiny_chat_rows, warmup_ratio=0.2)
    warm = math.ceil(10 * 0.2)
    for step, lr in _lr_by_step(rows).items():
        done = step - 1
        want = 1e-2 * (done / warm if done < warm else max(0.0, (10 - done) / (10 - warm)))
        assert lr == pytest.approx(want, rel=1e-6, abs=1e-12), (step, lr)
    _, rows = _train(tmp_path / "constant", tiny_model_dir, tiny_chat_rows, lr_scheduler="constant")
    assert set(_lr_by_step(rows).values()) == {1e-2}


def test_epochs_set_the_length_instead_of_max_steps(tmp_path, tiny_model_dir, tiny_chat_rows):
    rows = tiny_chat_rows[:8]  # two batches of 4 an epoch
    summary, _ = _train(tmp_path, tiny_model_dir, rows, epochs=2, max_steps=999)
    assert summary["steps"] == 4 and summary["planned_steps"] == 4 and not summary["stopped_early"]


def test_early_stopping_stops_and_keeps_the_best_checkpoint(tmp_path, tiny_model_dir, tiny_chat_rows):
    # An improvement must beat the best by 100 nats: none does, so patience 2 stops after the third evaluation.
    summary, rows = _train(tmp_path, tiny_model_dir, tiny_chat_rows, tiny_chat_rows[:4], max_steps=20, eval_steps=1,
                           early_stopping_patience=2, early_stopping_min_delta=100.0)  # fmt: skip
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r and r["step"] <= summary["steps"]}
    assert summary["steps"] == 3 and summary["stopped_early"] and summary["planned_steps"] == 20
    best_step = min(evals, key=evals.get)
    assert summary["best_checkpoint_step"] == best_step
    assert summary["best_metric"] == pytest.approx(evals[best_step])
    assert summary["eval_loss"] == pytest.approx(evals[best_step], rel=1e-4), (
        "the best checkpoint is the result"
    )


def test_schedule_settings_are_validated():
    with pytest.raises(ValueError, match="warmup_ratio or warmup_steps"):
        TrainConfig(warmup_ratio=0.1, warmup_steps=5)
    with pytest.raises(ValueError, match="needs eval_steps"):
        TrainConfig(early_stopping_patience=2)
    with pytest.raises(ConfigError, match="lr_scheduler"):
        validate_profile({"name": "x", "sft": {"lr_scheduler": "exponential"}})

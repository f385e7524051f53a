"""A training stage's length, learning-rate schedule, evaluation and early stopping, as transformers'
TrainingArguments and callbacks (phases.training.train puts them into every trainer's arguments)."""

from finetune_assets.config import TrainConfig


def schedule_args(cfg: TrainConfig) -> dict:
    """Length and schedule: max_steps or epochs, warmup (a ratio below 1 is transformers 5's warmup_steps
    convention), the scheduler, weight decay and clipping."""
    length = {"max_steps": -1, "num_train_epochs": cfg.epochs} if cfg.epochs else {"max_steps": cfg.max_steps}
    return {
        **length,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_ratio or cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
    }


def evaluation_args(cfg: TrainConfig) -> dict:
    """Evaluation every cfg.eval_steps; keeping the best checkpoint needs a save at every evaluation."""
    if not cfg.eval_steps:
        return {}
    best = cfg.load_best_at_end or cfg.early_stopping_patience > 0
    keep = {"load_best_model_at_end": True, "save_strategy": "steps", "save_steps": cfg.eval_steps,
            "save_total_limit": 2} if best else {}  # fmt: skip
    return {"eval_strategy": "steps", "eval_steps": cfg.eval_steps, "metric_for_best_model": cfg.best_metric,
            "greater_is_better": cfg.greater_is_better, **keep}  # fmt: skip


def add_early_stopping(trainer, cfg: TrainConfig) -> None:
    """transformers' EarlyStoppingCallback when cfg asks for it (and the trainer has a validation set)."""
    if cfg.early_stopping_patience and trainer.eval_dataset is not None:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(
            EarlyStoppingCallback(
                cfg.early_stopping_patience, early_stopping_threshold=cfg.early_stopping_min_delta
            )
        )

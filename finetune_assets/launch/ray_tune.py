"""A hyperparameter study of one SFT stage on Ray Tune, on the same Ray the training uses (embedded by default).

Optuna proposes each trial's settings from the recipe's ``sweep.space``; ASHA stops trials whose validation
metric trails the others' at the same evaluation. A trial is a real run of phases.training.train.sft with
the stage's settings overridden by the trial's, evaluated every ``sweep.eval_steps`` on the validation split
(reported to Tune at each evaluation). A trial that fails is recorded with its error and the study goes on.
The study lives in ``study_dir/tune`` (Tune's experiment state): started again after an interrupt, it is
restored and only unfinished trials run; finished ones are not rerun. The outcome (trials table, best
settings, plots) is written by phases.training.sweep.
"""

import os
from pathlib import Path

from finetune_assets.config import TrainConfig
from finetune_assets.config_sweep import SearchDimension, SweepConfig
from finetune_assets.launch.ray_cluster import ensure_ray
from finetune_assets.phases.training import sweep as sweep_outcome

EXPERIMENT = "tune"

STARTS_FILE = "trial_starts.log"  # one line per trial start (a restored study appends only the rerun ones)


def tune_space(space: dict[str, SearchDimension]) -> dict:
    from ray import tune

    out = {}
    for name, dim in space.items():
        if dim.loguniform is not None:
            out[name] = tune.loguniform(*dim.loguniform)
        elif dim.uniform is not None:
            out[name] = tune.uniform(*dim.uniform)
        elif dim.randint is not None:
            out[name] = tune.randint(*dim.randint)
        else:
            out[name] = tune.choice(list(dim.choice))
    return out


def trial_config(cfg: TrainConfig, sweep: SweepConfig, settings: dict) -> TrainConfig:
    """The stage's settings with the trial's on top, evaluated every sweep.eval_steps (no checkpoints, no
    early stopping of its own: ASHA decides)."""
    return TrainConfig.model_validate(
        {**cfg.model_dump(), **settings, "max_steps": sweep.max_steps or cfg.max_steps, "epochs": None,
         "eval_steps": sweep.eval_steps, "early_stopping_patience": 0, "load_best_at_end": False,
         "checkpoint_steps": 0}
    )  # fmt: skip


def _trial(settings: dict, *, base_dir: str, train_rows, eval_rows, cfg: dict, sweep: dict, study_dir: str):
    """One trial in a Tune worker: SFT with the trial's settings, each evaluation reported to Tune."""
    import tempfile

    from ray import tune
    from transformers import TrainerCallback

    from finetune_assets.phases.training.train import sft

    sweep_cfg = SweepConfig.model_validate(sweep)
    trial_cfg = trial_config(TrainConfig.model_validate(cfg), sweep_cfg, settings)
    with open(Path(study_dir) / STARTS_FILE, "a") as fh:
        fh.write(tune.get_context().get_trial_id() + "\n")

    class Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            tune.report({**{k: float(v) for k, v in (metrics or {}).items()}, "step": state.global_step})

    with tempfile.TemporaryDirectory() as out:
        sft(Path(base_dir), train_rows, eval_rows, trial_cfg, Path(out) / "model", callbacks=[Report()])


def run_study(
    base_dir: Path,
    train_rows: list[dict],
    eval_rows: list[dict],
    cfg: TrainConfig,
    sweep: SweepConfig,
    study_dir: Path,
    ray_address: str | None = None,
) -> list[dict]:
    """Run (or resume) the study; returns one row per trial: {trial_id, status, settings, metric, steps,
    evaluations, curve: [(step, metric)], error}."""
    if not eval_rows:
        raise ValueError("a sweep's objective is the validation split, and this instruction set has none")
    ensure_ray(ray_address)
    # Snapshot the experiment state at every step (not Tune's adaptive period): a study killed right after a
    # trial finished must not run that trial again when restored.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    study_dir = Path(study_dir).absolute()
    study_dir.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_parameters(
        _trial, base_dir=str(base_dir), train_rows=train_rows, eval_rows=eval_rows, cfg=cfg.model_dump(),
        sweep=sweep.model_dump(), study_dir=str(study_dir),
    )  # fmt: skip
    trainable = tune.with_resources(trainable, {"cpu": 1})
    path = study_dir / EXPERIMENT
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        evaluations = sweep_outcome.evaluations(sweep, cfg)
        searcher = ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=sweep.max_concurrent)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=evaluations,
                                  grace_period=min(sweep.grace_period, evaluations),
                                  reduction_factor=sweep.reduction_factor)  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(sweep.space),
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=sweep.trials,
            ),  # fmt: skip
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(study_dir),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),  # fmt: skip
        )
    results = tuner.fit()
    return [_row(result, sweep) for result in results]


def _row(result, sweep: SweepConfig) -> dict:
    frame = result.metrics_dataframe
    curve = []
    if frame is not None and sweep.metric in frame:
        curve = [(int(s), float(v)) for s, v in zip(frame["step"], frame[sweep.metric], strict=True)]
    settings = {k: v for k, v in (result.config or {}).items()}
    return {
        "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
        "status": "error" if result.error else "ok",
        "settings": settings,
        "metric": curve[-1][1] if curve else None,
        "best_metric": (min if sweep.mode == "min" else max)(v for _, v in curve) if curve else None,
        "steps": curve[-1][0] if curve else 0,
        "evaluations": len(curve),
        "curve": curve,
        "error": str(result.error).splitlines()[0][:300] if result.error else None,
    }

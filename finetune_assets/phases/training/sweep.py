"""A hyperparameter study's outcome: the trials table, the best settings as a recipe fragment, plots, and
applying that fragment to a training stage (launch.ray_tune runs the trials).

Files in the study folder: ``trials.json`` (every trial: settings, status, its validation curve, whether
ASHA stopped it), ``best.yaml`` ({stage: {setting: value}}, the settings of the trial with the best final
validation metric, and where they came from), ``trials.png`` (the metric against trial and against the
first searched setting). A training stage takes them with ``apply_best``; the stage's metadata then names
the study that chose its settings.
"""

import hashlib
import json
from pathlib import Path

import yaml

from finetune_assets.config import TrainConfig, check_continuable
from finetune_assets.config_sweep import SweepConfig
from finetune_assets.io import atomic_dir

TRIALS_FILE = "trials.json"

BEST_FILE = "best.yaml"

PLOT_FILE = "trials.png"


def evaluations(sweep: SweepConfig, cfg: TrainConfig) -> int:
    """How many times a trial that runs to the end is evaluated (ASHA's max_t; fewer means it was stopped)."""
    return max(1, (sweep.max_steps or cfg.max_steps) // sweep.eval_steps)


def study_key(sweep: SweepConfig, cfg: TrainConfig, data_hash: str, base_hash: str) -> str:
    """What a study's trials depend on: the same key finds the same (resumable, or finished) Tune state."""
    inputs = [sweep.model_dump(), cfg.model_dump(), data_hash, base_hash]
    return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summarize(trials: list[dict], sweep: SweepConfig, evaluations: int) -> dict:
    """{trials (with stopped_early), best: {trial_id, settings, metric} or None, counts}."""
    for trial in trials:
        trial["stopped_early"] = trial["status"] == "ok" and trial["evaluations"] < evaluations
    scored = [t for t in trials if t["status"] == "ok" and t["metric"] is not None]
    pick = min if sweep.mode == "min" else max
    best = pick(scored, key=lambda t: t["metric"]) if scored else None
    return {
        "trials": trials,
        "best": {k: best[k] for k in ("trial_id", "settings", "metric")} if best else None,
        "counts": {
            "trials": len(trials),
            "failed": sum(t["status"] == "error" for t in trials),
            "stopped_early": sum(t["stopped_early"] for t in trials),
            "completed": sum(t["status"] == "ok" and not t["stopped_early"] for t in trials),
        },
        "metric": sweep.metric,
        "mode": sweep.mode,
    }


def write(study: dict, sweep: SweepConfig, folder: Path, source: str, extends: str | None = None) -> Path:
    """trials.json, best.yaml (when a trial succeeded) and trials.png into ``folder`` (replaced whole);
    ``source`` names the study (a run id or path) in best.yaml. With ``extends`` (the recipe the study ran
    on) best.yaml is a whole recipe too: that recipe with the best settings, for the launchpad's ``recipe``."""
    with atomic_dir(Path(folder)) as tmp:
        (tmp / TRIALS_FILE).write_text(json.dumps(study, indent=2))
        if study["best"]:
            fragment = {sweep.stage: study["best"]["settings"]}
            if extends:
                fragment = {"name": f"study-{study['best']['trial_id']}", "extends": extends, **fragment}
            header = (f"# best of {study['counts']['trials']} trials by {sweep.metric} ({sweep.mode}) on the "
                      f"validation split: trial {study['best']['trial_id']}, {study['best']['metric']:.4f}\n"
                      f"# study: {source}\n")  # fmt: skip
            (tmp / BEST_FILE).write_text(header + yaml.safe_dump(fragment, sort_keys=True))
        plot(study, sweep, tmp / PLOT_FILE)
    return Path(folder)


def plot(study: dict, sweep: SweepConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in study["trials"] if t["metric"] is not None]
    main = next(iter(sweep.space), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, t in enumerate(rows):
        marker = "x" if t["stopped_early"] else "o"
        axes[0].scatter(i, t["metric"], marker=marker, color="tab:red" if t["stopped_early"] else "tab:blue")
        if main is not None and isinstance(t["settings"].get(main), int | float):
            axes[1].scatter(t["settings"][main], t["metric"], marker=marker)
    axes[0].set(xlabel="trial", ylabel=sweep.metric, title="x: stopped early by ASHA")
    if main is not None:
        axes[1].set(xlabel=main, ylabel=sweep.metric)
        if sweep.space[main].loguniform is not None:
            axes[1].set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def apply_best(cfg: TrainConfig, folder: Path, stage: str = "sft") -> tuple[TrainConfig, dict]:
    """``cfg`` with the study's best settings for ``stage``, and what was applied ({settings, study});
    raises FileNotFoundError naming the study asset when there is no best.yaml."""
    path = Path(folder) / BEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no best settings; materialize hpo_study (or run `finetune-assets sweep {stage}`) first"
        )
    text = path.read_text()
    settings = (yaml.safe_load(text) or {}).get(stage, {})
    study = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# study:")), ""
    )
    tuned = TrainConfig.model_validate({**cfg.model_dump(), **settings})
    check_continuable(stage, tuned)
    return tuned, {
        "settings": settings,
        "study": study,
    }

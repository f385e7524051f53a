"""A study's outcome: trials summarized (ASHA's early stops counted), the best settings written as a recipe
that loads, and applied to a stage."""

import json

import pytest

from finetune_assets.config import TrainConfig
from finetune_assets.config_sweep import SearchDimension, SweepConfig
from finetune_assets.phases.training import sweep
from finetune_assets.recipe import load_profile, recipe_path, validate_profile

SWEEP = SweepConfig(
    trials=3, max_steps=8, eval_steps=2, space={"learning_rate": SearchDimension(loguniform=(1e-4, 1e-2))}
)


def _trials():
    def trial(tid, lr, curve, status="ok"):
        return {"trial_id": tid, "status": status, "settings": {"learning_rate": lr}, "curve": curve,
                "metric": curve[-1][1] if curve else None, "steps": curve[-1][0] if curve else 0,
                "evaluations": len(curve), "error": None if status == "ok" else "boom"}  # fmt: skip

    return [
        trial("a", 1e-3, [(2, 3.0), (4, 2.5), (6, 2.2), (8, 2.0)]),
        trial("b", 1e-4, [(2, 3.5)]),  # stopped by ASHA after one evaluation
        trial("c", 5e-3, [(2, 2.9), (4, 2.4), (6, 2.1), (8, 1.8)]),
        trial("d", 9e-3, [], status="error"),
    ]


def test_summary_counts_stops_and_failures_and_picks_the_best_final_metric(tmp_path):
    study = sweep.summarize(_trials(), SWEEP, evaluations=4)
    assert study["counts"] == {"trials": 4, "failed": 1, "stopped_early": 1, "completed": 2}
    assert study["best"] == {"trial_id": "c", "settings": {"learning_rate": 5e-3}, "metric": 1.8}
    out = sweep.write(
        study, SWEEP, tmp_path / "study", source="mlflow run r1", extends=str(recipe_path("smoke"))
    )
    assert json.loads((out / sweep.TRIALS_FILE).read_text())["counts"]["stopped_early"] == 1
    assert (out / sweep.PLOT_FILE).stat().st_size > 1000
    recipe = load_profile(str(out / sweep.BEST_FILE))  # a recipe: the launchpad's `recipe` takes it
    assert recipe.sft.learning_rate == 5e-3 and recipe.sft.max_steps == load_profile("smoke").sft.max_steps
    cfg, applied = sweep.apply_best(TrainConfig(max_steps=11), out)
    assert cfg.learning_rate == 5e-3 and cfg.max_steps == 11
    assert applied == {"settings": {"learning_rate": 5e-3}, "study": "mlflow run r1"}


def test_no_study_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize hpo_study"):
        sweep.apply_best(TrainConfig(), tmp_path)


def test_a_prompt_tuned_best_is_refused_for_the_inst_stage(tmp_path):
    """The dpo stage continues INST's weights; a study that searched adapters may pick virtual tokens."""
    (tmp_path / sweep.BEST_FILE).write_text("sft: {adapter: prompt}\n")
    with pytest.raises(ValueError, match="dpo stage continues"):
        sweep.apply_best(TrainConfig(), tmp_path)
    (tmp_path / sweep.BEST_FILE).write_text("tr: {adapter: prompt}\n")  # the last stage may
    assert sweep.apply_best(TrainConfig(), tmp_path, stage="tr")[0].adapter == "prompt"


def test_the_search_space_is_validated():
    with pytest.raises(ValueError, match="exactly one of"):
        SearchDimension(uniform=(0.0, 1.0), choice=[1])
    with pytest.raises(ValueError, match="low must be below high"):
        SearchDimension(uniform=(1.0, 0.5))
    with pytest.raises(Exception, match="does not have"):
        validate_profile({"name": "x", "sweep": {"space": {"learning_rat": {"uniform": [0.1, 0.2]}}}})


def test_the_study_key_changes_with_what_the_trials_depend_on():
    key = sweep.study_key(SWEEP, TrainConfig(), "data", "base")
    assert key == sweep.study_key(SWEEP, TrainConfig(), "data", "base")
    assert key != sweep.study_key(SWEEP.model_copy(update={"trials": 4}), TrainConfig(), "data", "base")
    assert key != sweep.study_key(SWEEP, TrainConfig(learning_rate=1e-3), "data", "base")
    assert key != sweep.study_key(SWEEP, TrainConfig(), "other data", "base")

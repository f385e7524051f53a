"""hpo_study: a hyperparameter study of the SFT stage on Ray Tune (the recipe's sweep section); inst_model
takes its best settings with `use_study: true`. Not part of the main or retrain jobs: a study is started on
purpose (the UI, `finetune-assets sweep sft`), and its trials are real training runs."""

import dagster as dg
from pydantic import Field

from finetune_assets.defs.common import artifact_metadata, model_dir, tracked_run
from finetune_assets.defs.data import instruction_set
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RayResource, RecipeResource
from finetune_assets.defs.training import TRAINING_POOL, base_checkpoint
from finetune_assets.io import content_hash, read_records
from finetune_assets.launch.ray_tune import run_study
from finetune_assets.phases.data.instruction_set import RECORDS_FILE as INSTRUCTIONS_FILE
from finetune_assets.phases.evaluation.render import png_data_uri
from finetune_assets.phases.text.markdown import markdown_table
from finetune_assets.phases.training import stages, sweep
from finetune_assets.recipe import recipe_path


class StudyOverrides(dg.Config):
    trials: int | None = Field(None, description="Override the recipe's sweep.trials.")


@dg.asset(
    deps=[base_checkpoint, instruction_set], group_name="models", kinds={"ray", "optuna"}, pool=TRAINING_POOL
)
def hpo_study(
    context: dg.AssetExecutionContext,
    config: StudyOverrides,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Optuna proposes, ASHA stops early, every trial an SFT run evaluated on the validation split; writes
    trials.json, best.yaml (the best settings as a recipe fragment) and trials.png. The Tune state is kept
    by content (settings, data, base model), so an interrupted study resumes and a finished one is not rerun."""
    profile = recipe.load()
    sweep_cfg = profile.sweep.model_copy(update={"trials": config.trials} if config.trials else {})
    records = store.path("instruction_set") / INSTRUCTIONS_FILE
    data = stages.sft_data(read_records(records), profile.sft.mix_weights, profile.sft.seed)
    base = model_dir(store, "base_checkpoint")
    key = sweep.study_key(sweep_cfg, profile.sft, content_hash(records), content_hash(base))
    with tracked_run(context, mlflow, {"sweep": sweep_cfg.model_dump(), "sft": profile.sft.model_dump()}) as (
        tracker,
        run_id,
    ):
        ray.ensure()
        trials = run_study(base, data["train_rows"], data["eval_rows"], profile.sft, sweep_cfg,
                           store.base() / "hpo_runs" / key, ray_address=ray.address)  # fmt: skip
        study = sweep.summarize(trials, sweep_cfg, sweep.evaluations(sweep_cfg, profile.sft))
        for t in study["trials"]:
            tracker.child_run(run_id, f"trial-{t['trial_id']}", t["settings"], {sweep_cfg.metric: t["curve"]},
                              {"status": t["status"], "stopped_early": t["stopped_early"]})  # fmt: skip
        out = sweep.write(study, sweep_cfg, store.path("hpo_study"), source=f"mlflow run {run_id}",
                          extends=str(recipe_path(recipe.profile)))  # fmt: skip
        tracker.log_metrics(run_id, {**study["counts"], "best_metric": (study["best"] or {}).get("metric")})
        tracker.log_artifact(run_id, out / sweep.PLOT_FILE)
        context.log.info(f"hpo_study: {study['counts']}, best {study['best']}")
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out, run_id, study["counts"],
                best=dg.MetadataValue.json(study["best"]),
                trials=dg.MetadataValue.md(_trials_table(study)),
                plot=dg.MetadataValue.md(f"![trials]({png_data_uri(out / sweep.PLOT_FILE)})"),  # inline for the UI
            )
        )  # fmt: skip


def _trials_table(study: dict) -> str:
    names = sorted({k for t in study["trials"] for k in t["settings"]})
    rows = [[t["trial_id"], t["status"], "yes" if t["stopped_early"] else "", t["steps"],
             "" if t["metric"] is None else f"{t['metric']:.4f}", *(t["settings"].get(n, "") for n in names)]
            for t in study["trials"]]  # fmt: skip
    return markdown_table(["trial", "status", "stopped early", "steps", study["metric"], *names], rows)

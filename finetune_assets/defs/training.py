"""Model assets: base_checkpoint -> inst_model (SFT) -> dpo_model (DPO) -> tr_model (tools & retrieval).

Each training asset runs its loop on Ray Train (embedded or a cluster, per RayResource) and registers the
result as a model version in MLflow.
"""

from collections.abc import Callable

import dagster as dg
from pydantic import Field

from finetune_assets.config import ScalingConfig, TrainConfig
from finetune_assets.defs.common import (
    artifact_metadata,
    input_path,
    llm_client,
    model_dir,
    tracked_run,
    warn_quarantined,
)
from finetune_assets.defs.data import (
    instruction_set,
    retrieval_index,
    training_documents,
)
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RayResource, RecipeResource
from finetune_assets.defs.serving import online_feedback
from finetune_assets.io import content_hash, read_records
from finetune_assets.launch.ray_train import run_training
from finetune_assets.phases.data import online_feedback as online_feedback_phase
from finetune_assets.phases.data import preference_set
from finetune_assets.phases.data.instruction_set import RECORDS_FILE as INSTRUCTIONS_FILE
from finetune_assets.phases.evaluation import redteam
from finetune_assets.phases.training import stages, sweep
from finetune_assets.recipe import load_profile
from finetune_assets.tracking import flatten

TRAINING_RETRY = dg.RetryPolicy(max_retries=1, delay=5)
# Training materializations claim a slot of this concurrency pool, so that two runs queue instead of sharing
# one accelerator. Its limit is the instance's: dagster.postgres.yaml's default of 1, or what
# `finetune-assets stack up` sets from FINETUNE_ASSETS_GPU_POOL_LIMIT. The embedded dagster.yaml sets none.
TRAINING_POOL = "gpu"


class TrainOverrides(dg.Config):
    """Per-materialization choices in the launchpad: which recipe's stage settings to train with, and a few
    overrides on top."""

    recipe: str | None = Field(
        None, description="Take this stage's settings from another recipe (e.g. demo-kto, demo-full)."
    )
    max_steps: int | None = Field(None, description="Override the recipe's max_steps.")
    learning_rate: float | None = Field(None, description="Override the recipe's learning rate.")
    use_study: bool = Field(
        False,
        description="inst_model: train with hpo_study's best settings (its best.yaml), overrides on top.",
    )

    def stage(
        self, run_recipe: "RecipeResource", stage: str, store: "ArtifactStore | None" = None
    ) -> TrainConfig:
        """The ``stage`` section (sft, dpo, tr) of the chosen recipe, with the study's best settings (when
        use_study) and the overrides applied."""

        base = getattr(load_profile(self.recipe) if self.recipe else run_recipe.load(), stage)
        if self.use_study:
            if stage != "sft" or store is None:
                raise ValueError(
                    f"use_study applies to inst_model (the sft stage the study searched), not {stage}"
                )
            base, _ = sweep.apply_best(base, store.path("hpo_study"))
        changes = {
            k: v for k, v in {"max_steps": self.max_steps, "learning_rate": self.learning_rate}.items() if v
        }
        return base.model_copy(update=changes)


@dg.asset(deps=["dedup_corpus", "eval_sets"], group_name="models", kinds={"pytorch"}, pool=TRAINING_POOL)
def base_checkpoint(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The foundation model as a plain Hugging Face folder (local dir, hub id, GGUF conversion, or tiny),
    optionally continued-pretrained on the domain corpus (model.cpt.enabled) on Ray Train."""

    profile = recipe.load()
    with tracked_run(context, mlflow, {"model": profile.model.model_dump()}) as (tracker, run_id):
        made = stages.base_checkpoint(
            profile.model,
            store.path("base_checkpoint"),
            documents=lambda: training_documents(store),
            cpt_train_cfg=profile.sft,
            seed=profile.seed,
            run=_runner(ray, store, profile.scaling, context.log.info),
            tracker=tracker,
            run_id=run_id,
        )
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                made.out_dir, run_id, stages.scalars(made.info), model_version=made.model_version
            )
        )


@dg.asset(deps=[base_checkpoint, instruction_set, online_feedback], group_name="data", kinds={"parquet"})
def preference_pairs(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """AI-feedback pairs: chosen = the reference (stronger source), rejected = the base model's own answer;
    with preferences.safety, refusal / over-refusal pairs from the packaged safety set (phases.data.safety);
    plus every materialized day of online_feedback (live ratings) and the last eval_reports' red-team
    findings (phases.evaluation.redteam)."""
    profile = recipe.load()
    cfg = profile.preferences
    out = store.path("preference_pairs")
    with tracked_run(context, mlflow, {"preferences": cfg.model_dump()}) as (tracker, run_id):
        built = preference_set.build(
            cfg,
            read_records(store.path("instruction_set") / INSTRUCTIONS_FILE),
            store.path("eval_sets"),
            out,
            base_dir=model_dir(store, "base_checkpoint"),
            decontam_ngram=profile.instructions.decontam_ngram,
            system_prompt=profile.instructions.system_prompt,
            seed=profile.seed,
            feedback_files=[input_path(name) for name in cfg.feedback_files],
            teacher_client=llm_client(cfg.teacher) if cfg.chosen_source == "teacher" else None,
            judge_client=llm_client(cfg.judge) if cfg.judge is not None else None,
            extra_feedback={
                "online": online_feedback_phase.load_days(store.asset_root("online_feedback")),
                # the last evaluation's red-team findings (eval_reports runs after this asset: a loop, not a dep)
                "redteam": redteam.load_findings(store.path("eval_reports")),
            },
        )
        warn_quarantined(context, built.quarantine)
        tracker.log_metrics(run_id, flatten(built.stats, numbers_only=True))
        tracker.log_input(run_id, "preference_pairs", built.pairs_path, content_hash(built.pairs_path))
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, built.stats))


def _runner(
    ray: RayResource, store: ArtifactStore, scaling: ScalingConfig, log: Callable[[str], None]
) -> stages.Runner:
    """run_training on the configured Ray cluster; Ray starts only when something is trained. Each logged
    step reaches ``log`` (the Dagster run's log) while the job runs; the cluster and Ray job id at the end."""

    def run(method: str, kwargs: dict) -> dict:
        ray.ensure()
        summary = run_training(
            method,
            kwargs,
            scaling,
            storage_dir=store.base() / "ray_results",
            ray_address=ray.address,
            on_step=lambda step: log(step_line(method, step)),
        )
        where = summary["ray"]
        cluster = "embedded Ray" if where["embedded"] else f"Ray cluster {where['address']}"
        log(f"{method} ran as Ray job {where['job_id']} on {cluster} ({where['wall_s']:.0f} s)")
        return summary

    return run


def step_line(method: str, step: dict) -> str:
    """One training step as a log line: 'sft step 20/120 loss 1.234 lr 1.9e-04 412 tok/s'."""
    parts = [f"{method} step {step['step']}/{step.get('max_steps', '?')}", f"loss {step['loss']:.4f}"]
    if "learning_rate" in step:
        parts.append(f"lr {step['learning_rate']:.2e}")
    if "tokens_per_s" in step:
        parts.append(f"{step['tokens_per_s']:.0f} tok/s")
    return " ".join(parts)


def _train_variant(
    context: dg.AssetExecutionContext,
    stage: stages.Stage,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
    extra: dict | None = None,
) -> dg.MaterializeResult:
    """Around stages.train_variant: the asset's MLflow run, its log lines and its metadata (+ ``extra``)."""

    profile = recipe.load()
    asset = context.asset_key.to_user_string()
    if stage.notes:
        context.log.info(f"{stage.variant} data: {stage.notes}")
    with tracked_run(context, mlflow, {"profile": profile.name}) as (tracker, run_id):
        trained = stages.train_variant(
            stage,
            store.path(asset),
            profile.scaling,
            run=_runner(ray, store, profile.scaling, context.log.info),
            tracker=tracker,
            run_id=run_id,
            recipe=profile.model_dump(mode="json"),
        )
        summary = trained.summary
        if trained.reused:
            context.log.info(
                f"{stage.variant}: inputs unchanged (training key {trained.training_key[:12]}), "
                f"reusing {trained.out_dir}"
            )
        else:
            context.log.info(
                f"{stage.variant}: loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} "
                f"in {summary['steps']} steps"
            )
        curve = (
            {}
            if trained.reused
            else {"loss_curve": dg.MetadataValue.json(summary["losses"]), **stages.ray_tags(summary)}
        )
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                trained.out_dir,
                run_id,
                stages.scalars(summary),
                model_version=trained.model_version,
                reused=trained.reused,
                training_key=trained.training_key,
                **curve,
                **(extra or {}),
            )
        )


@dg.asset(
    deps=[base_checkpoint, instruction_set],
    group_name="models",
    kinds={"pytorch", "ray"},
    retry_policy=TRAINING_RETRY,
    pool=TRAINING_POOL,
)
def inst_model(
    context: dg.AssetExecutionContext,
    config: TrainOverrides,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Supervised fine-tuning with LoRA on all linear layers (the INST model); with use_study, on the
    settings hpo_study found best (the metadata names the study)."""
    stage = stages.inst_stage(
        store.path("instruction_set"),
        start_dir=model_dir(store, "base_checkpoint"),
        cfg=config.stage(recipe, "sft", store),
    )
    chosen = {}
    if config.use_study:
        _, applied = sweep.apply_best(stage.cfg, store.path("hpo_study"))
        context.log.info(f"inst_model: settings from {applied['study']}: {applied['settings']}")
        chosen = {"settings_from_study": dg.MetadataValue.json(applied)}
    return _train_variant(context, stage, recipe, store, ray, mlflow, chosen)


@dg.asset(
    deps=[inst_model, preference_pairs],
    group_name="models",
    kinds={"pytorch", "ray"},
    retry_policy=TRAINING_RETRY,
    pool=TRAINING_POOL,
)
def dpo_model(
    context: dg.AssetExecutionContext,
    config: TrainOverrides,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Preference optimization from the INST model on the AI-feedback pairs (the DPO model): DPO by default,
    KTO (pairs split into thumbs up/down, plus human binary feedback) or ORPO by ``dpo.preference_method``."""
    stage = stages.dpo_stage(
        store.path("preference_pairs"),
        start_dir=model_dir(store, "inst_model"),
        cfg=config.stage(recipe, "dpo"),
    )
    return _train_variant(context, stage, recipe, store, ray, mlflow)


@dg.asset(
    deps=[dpo_model, retrieval_index, instruction_set],
    group_name="models",
    kinds={"pytorch", "ray"},
    retry_policy=TRAINING_RETRY,
    pool=TRAINING_POOL,
)
def tr_model(
    context: dg.AssetExecutionContext,
    config: TrainOverrides,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The tools-and-retrieval model, from the DPO model on retrieval-grounded and tool-call conversations:
    SFT, or SFT then GRPO with verifiable tool rewards (``tr.method``)."""
    profile = recipe.load()
    stage = stages.tr_stage(
        store.path("instruction_set"),
        training_documents(store),
        store.path("retrieval_index"),
        store.path("eval_sets"),
        profile.retrieval,
        start_dir=model_dir(store, "dpo_model"),
        cfg=config.stage(recipe, "tr"),
        examples_path=store.path("tr_examples") / "examples.parquet",
        seed=profile.seed,
    )
    return _train_variant(context, stage, recipe, store, ray, mlflow)

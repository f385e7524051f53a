"""Model assets: base_checkpoint -> inst_model (SFT) -> dpo_model (DPO) -> tr_model (tools & retrieval).

Each training asset runs its loop on Ray Train (embedded or a cluster, per RayResource) and registers the
result as a model version in MLflow.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from finetune_assets.config import TrainConfig, default_home
from finetune_assets.defs.common import (
    artifact_metadata,
    input_path,
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
from finetune_assets.io import content_hash, read_records, write_json
from finetune_assets.launch.ray_train import run_training
from finetune_assets.phases.data import evalsets, preference_set, tr_data
from finetune_assets.phases.data.instruction_set import RECORDS_FILE as INSTRUCTIONS_FILE
from finetune_assets.phases.inference import llm
from finetune_assets.phases.training import models
from finetune_assets.phases.training.artifacts import REUSE_FILE, read_summary, reusable, training_key
from finetune_assets.phases.training.examples import kto_rows
from finetune_assets.recipe import load_profile
from finetune_assets.tracking import flatten

TRAINING_RETRY = dg.RetryPolicy(max_retries=1, delay=5)


class TrainOverrides(dg.Config):
    """Per-materialization choices in the launchpad: which recipe's stage settings to train with, and a few
    overrides on top."""

    recipe: str | None = Field(
        None, description="Take this stage's settings from another recipe (e.g. demo-kto, demo-full)."
    )
    max_steps: int | None = Field(None, description="Override the recipe's max_steps.")
    learning_rate: float | None = Field(None, description="Override the recipe's learning rate.")

    def stage(self, run_recipe: "RecipeResource", stage: str) -> TrainConfig:
        """The ``stage`` section (sft, dpo, tr) of the chosen recipe, with the overrides applied."""

        base = getattr(load_profile(self.recipe) if self.recipe else run_recipe.load(), stage)
        changes = {
            k: v for k, v in {"max_steps": self.max_steps, "learning_rate": self.learning_rate}.items() if v
        }
        return base.model_copy(update=changes)


@dg.asset(deps=["dedup_corpus", "eval_sets"], group_name="models", kinds={"pytorch"})
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
    cpt = profile.model.cpt
    needs_texts = profile.model.source == "tiny" or cpt.enabled
    texts = [doc["text"] for doc in training_documents(store)] if needs_texts else None
    with tracked_run(context, mlflow, {"model": profile.model.model_dump()}) as (tracker, run_id):
        out = store.path("base_checkpoint")
        # With continued pretraining the resolved model is its starting point, kept beside the result.
        resolved = out.with_name("resolved") if cpt.enabled else out
        info = models.resolve_base_model(profile.model, resolved, corpus_texts=texts, seed=profile.seed)
        if cpt.enabled:
            ray.ensure()
            summary = run_training(
                "cpt",
                {
                    "base_dir": str(resolved),
                    "corpus_texts": texts,
                    "cfg": cpt,
                    "train_cfg": profile.sft,
                    "out_dir": str(out),
                },
                profile.scaling,
                storage_dir=store.base() / "ray_results",
                ray_address=ray.address,
            )
            tracker.log_metric_history(run_id, "cpt_loss", summary["losses"])
            info.update({f"cpt_{k}": v for k, v in _scalars(summary).items()})
        version = tracker.register_model("base", model_dir(store, "base_checkpoint"), run_id)
        return dg.MaterializeResult(
            metadata=artifact_metadata(out, run_id, _scalars(info), model_version=version)
        )


@dg.asset(deps=[base_checkpoint, instruction_set], group_name="data", kinds={"parquet"})
def preference_pairs(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """AI-feedback pairs: chosen = the reference (stronger source), rejected = the base model's own answer;
    with preferences.safety, refusal / over-refusal pairs from the packaged safety set (phases.data.safety)."""
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
            teacher_client=_llm_client(cfg.teacher) if cfg.chosen_source == "teacher" else None,
            judge_client=_llm_client(cfg.judge) if cfg.judge is not None else None,
        )
        warn_quarantined(context, built.quarantine)
        tracker.log_metrics(run_id, flatten(built.stats, numbers_only=True))
        tracker.log_input(run_id, "preference_pairs", built.pairs_path, content_hash(built.pairs_path))
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, built.stats))


def _llm_client(endpoint):

    return llm.make_client(endpoint, default_home() / "llm_cache")


def _train_variant(
    context: dg.AssetExecutionContext,
    *,
    variant: str,
    method: str,
    start_from: str,
    data: dict,
    train_cfg: TrainConfig,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
    inputs: dict[str, Path],
) -> dg.MaterializeResult:
    """Run one training method on Ray Train, log it to MLflow and register the model version.

    ``data`` holds the method's data arguments (phases.training.train: sft takes train_rows/eval_rows, dpo rows).
    """

    profile = recipe.load()
    asset = context.asset_key.to_user_string()
    out = store.path(asset)
    params = {
        "method": method,
        "start_from": start_from,
        "train": train_cfg.model_dump(),
        "scaling": profile.scaling.model_dump(),
        "profile": profile.name,
    }
    start = model_dir(store, start_from)
    key = training_key(method, start, data, train_cfg, profile.scaling)
    with tracked_run(context, mlflow, {**params, "training_key": key}) as (tracker, run_id):
        for name, path in inputs.items():
            tracker.log_input(run_id, name, path, content_hash(path))
        # The whole resolved recipe (after extends and launchpad overrides) beside the run's metrics.
        tracker.client.log_dict(
            run_id, {**profile.model_dump(mode="json"), "trained_stage": params}, "recipe.json"
        )
        previous = reusable(out, key)
        if previous is not None:
            # Same data, recipe and starting model as the finished run that made this folder: training
            # again would only reproduce it.
            summary = read_summary(out)
            tracker.log_metrics(run_id, {**_scalars(summary), "reused": 1})
            context.log.info(f"{variant}: inputs unchanged (training key {key[:12]}), reusing {out}")
            return dg.MaterializeResult(
                metadata=artifact_metadata(
                    out,
                    run_id,
                    _scalars(summary),
                    model_version=previous["model_version"],
                    reused=True,
                    training_key=key,
                )
            )
        ray.ensure()
        summary = run_training(
            method,
            {
                ("model_dir" if method in ("dpo", "kto", "orpo") else "base_dir"): str(start),
                **data,
                "cfg": train_cfg,
                "out_dir": str(out),
            },
            profile.scaling,
            storage_dir=store.base() / "ray_results",
            ray_address=ray.address,
        )
        tracker.log_metric_history(run_id, "train_loss", summary["losses"])
        for name, points in summary.get("step_metrics", {}).items():
            if name != "loss":  # already train_loss
                tracker.log_metric_history(run_id, f"train/{name}", points)
        tracker.log_metrics(run_id, {**_scalars(summary), "reused": 0})
        tracker.log_artifact(run_id, out / "train_summary.json")
        version = tracker.register_model(variant, model_dir(store, asset), run_id, tags={"method": method})
        write_json({"training_key": key, "model_version": version, "mlflow_run_id": run_id}, out / REUSE_FILE)
        context.log.info(
            f"{variant}: loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} in {summary['steps']} steps"
        )
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                _scalars(summary),
                model_version=version,
                loss_curve=dg.MetadataValue.json(summary["losses"]),
                reused=False,
                training_key=key,
            )
        )


@dg.asset(
    deps=[base_checkpoint, instruction_set],
    group_name="models",
    kinds={"pytorch", "ray"},
    retry_policy=TRAINING_RETRY,
)
def inst_model(
    context: dg.AssetExecutionContext,
    config: TrainOverrides,
    recipe: RecipeResource,
    store: ArtifactStore,
    ray: RayResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Supervised fine-tuning with LoRA on all linear layers (the INST model)."""
    path = store.path("instruction_set") / INSTRUCTIONS_FILE
    rows = read_records(path)
    return _train_variant(
        context,
        variant="inst",
        method="sft",
        start_from="base_checkpoint",
        data=sft_data(rows),
        train_cfg=config.stage(recipe, "sft"),
        recipe=recipe,
        store=store,
        ray=ray,
        mlflow=mlflow,
        inputs={"instruction_set": path},
    )


@dg.asset(
    deps=[inst_model, preference_pairs],
    group_name="models",
    kinds={"pytorch", "ray"},
    retry_policy=TRAINING_RETRY,
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

    train_cfg = config.stage(recipe, "dpo")
    path = store.path("preference_pairs") / preference_set.PAIRS_FILE
    rows = read_records(path)
    if train_cfg.preference_method == "kto":
        binary = store.path("preference_pairs") / preference_set.BINARY_FILE
        rows = kto_rows(rows, read_records(binary) if binary.exists() else [])
    return _train_variant(
        context,
        variant="dpo",
        method=train_cfg.preference_method,
        start_from="inst_model",
        data={"rows": rows},
        train_cfg=train_cfg,
        recipe=recipe,
        store=store,
        ray=ray,
        mlflow=mlflow,
        inputs={"preference_pairs": path},
    )


@dg.asset(
    deps=[dpo_model, retrieval_index, instruction_set],
    group_name="models",
    kinds={"pytorch", "ray"},
    retry_policy=TRAINING_RETRY,
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
    train_cfg = config.stage(recipe, "tr")
    prepared = tr_data.prepare(
        read_records(store.path("instruction_set") / INSTRUCTIONS_FILE),
        training_documents(store),
        store.path("retrieval_index"),
        profile.retrieval,
        tool_use_eval_items=evalsets.load_eval_sets(store.path("eval_sets"))["tool_use"],
        tokenizer_dir=model_dir(store, "dpo_model"),
        max_length=train_cfg.max_length,
        out_path=store.path("tr_examples") / "examples.parquet",
        seed=profile.seed,
    )
    context.log.info(f"T&R examples: {prepared.stats}; lengths: {prepared.lengths}")
    records, examples_path = prepared.records, prepared.path
    return _train_variant(
        context,
        variant="tr",
        method=train_cfg.method,
        start_from="dpo_model",
        data=sft_data(records),
        train_cfg=train_cfg,
        recipe=recipe,
        store=store,
        ray=ray,
        mlflow=mlflow,
        inputs={"tr_examples": examples_path},
    )


def sft_data(rows: list[dict]) -> dict:
    """SFT's data arguments: the train split to learn from, the validation split for eval loss."""
    return {
        "train_rows": [r for r in rows if r["split"] == "train"],
        "eval_rows": [r for r in rows if r["split"] == "validation"],
    }


def _scalars(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}

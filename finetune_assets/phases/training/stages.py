"""One entry point per model asset: what each training stage learns from, and the step they share (reuse the
finished run when nothing changed, else train, log to MLflow and register the model version).

    stage = stages.inst_stage(instruction_dir, start_dir=base, cfg=recipe.sft)
    trained = stages.train_variant(stage, out_dir, scaling, run=runner, tracker=tracker, run_id=run_id)

The runner (launch.ray_train.run_training bound to a cluster) and the tracker come in as arguments: launch/
sits above phases/, and a fake runner lets the tests drive the whole step without Ray or Dagster.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import ModelConfig, RetrievalConfig, ScalingConfig, TrainConfig
from finetune_assets.phases.data import evalsets, preference_set, tr_data
from finetune_assets.phases.data.instruction_set import RECORDS_FILE as INSTRUCTIONS_FILE
from finetune_assets.phases.training import models
from finetune_assets.phases.training.artifacts import (
    REUSE_FILE,
    SUMMARY_FILE,
    loadable_dir,
    read_summary,
    reusable,
    training_key,
)
from finetune_assets.phases.training.examples import kto_rows
from finetune_assets.tracking import Tracker

# (method, that method's keyword arguments) -> the train_summary.json rank 0 wrote
Runner = Callable[[str, dict], dict]
# Preference methods continue a trained model (model_dir); the others start from a base folder (base_dir).
_CONTINUES_MODEL = ("dpo", "kto", "orpo")


@dataclass(frozen=True)
class Stage:
    """One training stage, ready to run: the registered variant it makes and what it learns from."""

    variant: str  # the registered model's variant tag: inst, dpo, tr
    method: str  # phases.training.train.<method>, or grpo
    start_dir: Path  # the loadable folder it starts from
    cfg: TrainConfig
    data: dict  # the method's data arguments (sft: train_rows/eval_rows; dpo, kto, orpo: rows)
    inputs: dict[str, Path]  # files logged as the run's MLflow dataset inputs
    notes: dict = field(default_factory=dict)  # what preparing the data found, for the run's log

    def method_kwargs(self, out_dir: Path) -> dict:
        start_key = "model_dir" if self.method in _CONTINUES_MODEL else "base_dir"
        return {start_key: str(self.start_dir), **self.data, "cfg": self.cfg, "out_dir": str(out_dir)}


@dataclass(frozen=True)
class TrainedVariant:
    out_dir: Path
    summary: dict  # train_summary.json
    model_version: str
    training_key: str
    reused: bool  # True when the folder already held this exact run


def sft_data(rows: list[dict], mix_weights: dict[str, float] | None = None, seed: int = 0) -> dict:
    """SFT's data arguments: the train split to learn from (mixed by ``mix_weights``), the validation split
    for eval loss."""
    train = [r for r in rows if r["split"] == "train"]
    return {
        "train_rows": mix_by_source(train, mix_weights or {}, seed),
        "eval_rows": [r for r in rows if r["split"] == "validation"],
    }


def mix_by_source(rows: list[dict], weights: dict[str, float], seed: int = 0) -> list[dict]:
    """Each named generator's rows resampled to weight x their count: whole copies for the integer part, a
    seeded sample without replacement for the rest; other generators' rows unchanged, order kept."""
    unknown = sorted(set(weights) - {r["generator"] for r in rows})
    if unknown:
        raise ValueError(f"mix_weights names generators the instruction set does not have: {unknown}")
    rng = random.Random(seed)
    out: list[dict] = []
    for generator in dict.fromkeys(r["generator"] for r in rows):
        group = [r for r in rows if r["generator"] == generator]
        weight = weights.get(generator, 1.0)
        whole, extra = int(weight), round((weight - int(weight)) * len(group))
        out += group * whole + rng.sample(group, extra)
    return out


def inst_stage(instruction_dir: Path, *, start_dir: Path, cfg: TrainConfig) -> Stage:
    """The INST model: SFT on the instruction set."""
    path = Path(instruction_dir) / INSTRUCTIONS_FILE
    data = sft_data(io.read_records(path), cfg.mix_weights, cfg.seed)
    return Stage("inst", "sft", start_dir, cfg, data, {"instruction_set": path})


def dpo_stage(pairs_dir: Path, *, start_dir: Path, cfg: TrainConfig) -> Stage:
    """The DPO model: ``cfg.preference_method`` on the AI-feedback pairs; KTO also learns from the human
    binary feedback beside them, with every pair split into a thumbs-up and a thumbs-down."""
    path = Path(pairs_dir) / preference_set.PAIRS_FILE
    rows = io.read_records(path)
    if cfg.preference_method == "kto":
        binary = Path(pairs_dir) / preference_set.BINARY_FILE
        rows = kto_rows(rows, io.read_records(binary) if binary.exists() else [])
    return Stage("dpo", cfg.preference_method, start_dir, cfg, {"rows": rows}, {"preference_pairs": path})


def tr_stage(
    instruction_dir: Path,
    documents: list[dict],
    index_dir: Path,
    eval_sets_dir: Path,
    retrieval_cfg: RetrievalConfig,
    *,
    start_dir: Path,
    cfg: TrainConfig,
    examples_path: Path,
    seed: int = 0,
) -> Stage:
    """The T&R model: ``cfg.method`` (sft, or sft then grpo) on retrieval-grounded and tool-call conversations
    built by tr_data.prepare, none of them from a held-out tool-use expression."""
    prepared = tr_data.prepare(
        io.read_records(Path(instruction_dir) / INSTRUCTIONS_FILE),
        documents,
        index_dir,
        retrieval_cfg,
        tool_use_eval_items=evalsets.load_eval_sets(eval_sets_dir)["tool_use"],
        tokenizer_dir=start_dir,
        max_length=cfg.max_length,
        out_path=examples_path,
        seed=seed,
    )
    notes = {"examples": prepared.stats, "lengths": prepared.lengths}
    return Stage(
        "tr", cfg.method, start_dir, cfg, sft_data(prepared.records), {"tr_examples": prepared.path}, notes
    )


def train_variant(
    stage: Stage,
    out_dir: Path,
    scaling: ScalingConfig,
    *,
    run: Runner,
    tracker: Tracker,
    run_id: str,
    recipe: dict | None = None,
) -> TrainedVariant:
    """Train ``stage`` into ``out_dir`` and register it, or reuse the finished run already there when its
    training key (method, config, starting model, rows, batch-shaping scaling) is the same: training again
    would only reproduce it. ``recipe`` (the whole resolved recipe) is logged beside the run's metrics."""
    out_dir = Path(out_dir)
    key = training_key(stage.method, stage.start_dir, stage.data, stage.cfg, scaling)
    tracker.log_params(run_id, {**_stage_params(stage, scaling), "training_key": key})
    for name, path in stage.inputs.items():
        tracker.log_input(run_id, name, path, io.content_hash(path))
    tracker.client.log_dict(
        run_id, {**(recipe or {}), "trained_stage": _stage_params(stage, scaling)}, "recipe.json"
    )

    previous = reusable(out_dir, key)
    if previous is not None:
        summary = read_summary(out_dir)
        tracker.log_metrics(run_id, {**scalars(summary), "reused": 1})
        return TrainedVariant(out_dir, summary, previous["model_version"], key, reused=True)

    summary = run(stage.method, stage.method_kwargs(out_dir))
    tracker.set_tags(run_id, ray_tags(summary))
    tracker.log_metric_history(run_id, "train_loss", summary["losses"])
    for name, points in summary.get("step_metrics", {}).items():
        if name != "loss":  # already train_loss
            tracker.log_metric_history(run_id, f"train/{name}", points)
    tracker.log_metrics(run_id, {**scalars(summary), "reused": 0})
    tracker.log_artifact(run_id, out_dir / SUMMARY_FILE)
    version = tracker.register_model(
        stage.variant, loadable_dir(out_dir), run_id, tags={"method": stage.method}
    )
    io.write_json(
        {"training_key": key, "model_version": version, "mlflow_run_id": run_id}, out_dir / REUSE_FILE
    )
    return TrainedVariant(out_dir, summary, version, key, reused=False)


@dataclass(frozen=True)
class BaseCheckpoint:
    out_dir: Path
    info: dict  # models.resolve_base_model's description, plus cpt_* figures after continued pretraining
    model_version: str


def base_checkpoint(
    model_cfg: ModelConfig,
    out_dir: Path,
    *,
    documents: Callable[[], list[dict]],
    cpt_train_cfg: TrainConfig,
    seed: int,
    run: Runner,
    tracker: Tracker,
    run_id: str,
) -> BaseCheckpoint:
    """The foundation model as a plain Hugging Face folder, optionally continued-pretrained on the training-
    side corpus (``model_cfg.cpt``), registered as the ``base`` variant. ``documents`` is called only when
    the corpus is needed (a tiny model's tokenizer, or continued pretraining)."""
    out_dir = Path(out_dir)
    cpt = model_cfg.cpt
    needs_texts = model_cfg.source == "tiny" or cpt.enabled
    texts = [doc["text"] for doc in documents()] if needs_texts else None
    # With continued pretraining the resolved model is its starting point, kept beside the result.
    resolved = out_dir.with_name("resolved") if cpt.enabled else out_dir
    info = models.resolve_base_model(model_cfg, resolved, corpus_texts=texts, seed=seed)
    if cpt.enabled:
        summary = run(
            "cpt",
            {
                "base_dir": str(resolved),
                "corpus_texts": texts,
                "cfg": cpt,
                "train_cfg": cpt_train_cfg,
                "out_dir": str(out_dir),
            },
        )
        tracker.set_tags(run_id, ray_tags(summary))
        tracker.log_metric_history(run_id, "cpt_loss", summary["losses"])
        info.update({f"cpt_{k}": v for k, v in scalars(summary).items()})
    version = tracker.register_model("base", loadable_dir(out_dir), run_id)
    return BaseCheckpoint(out_dir, info, version)


def ray_tags(summary: dict) -> dict:
    """Where a run trained, for its MLflow run and asset metadata: the Ray cluster's address and job id."""
    where = summary.get("ray") or {}
    tags = {"ray_address": where.get("address"), "ray_job_id": where.get("job_id")}
    if where:
        tags["ray_cluster"] = "embedded" if where.get("embedded") else "external"
    return {k: v for k, v in tags.items() if v is not None}


def scalars(stats: dict) -> dict:
    """The plain numbers and strings of a summary: what MLflow metrics and Dagster metadata can hold."""
    return {k: v for k, v in stats.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}


def _stage_params(stage: Stage, scaling: ScalingConfig) -> dict:
    return {
        "method": stage.method,
        "start_from": str(stage.start_dir),
        "train": stage.cfg.model_dump(),
        "scaling": scaling.model_dump(),
    }

"""Data assets: raw_corpus -> dedup_corpus -> eval_sets -> instruction_set / preference_pairs / retrieval_index."""

from pathlib import Path

import dagster as dg

from finetune_assets.defs.common import artifact_metadata, tracked_run
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RecipeResource
from finetune_assets.io import content_hash, read_records, write_json, write_records_parquet
from finetune_assets.phases import corpus, dedup, evalsets, instructions, retrieval

data_drops = dg.DynamicPartitionsDefinition(name="data_drops")


def documents_path(store: ArtifactStore) -> Path:
    return store.path("dedup_corpus") / "documents.parquet"


def training_documents(store: ArtifactStore) -> list[dict]:
    """dedup_corpus minus every document an eval set came from: what training may see."""
    manifest = evalsets.load_eval_sets(store.path("eval_sets"))["manifest"]
    excluded = set(manifest["excluded_doc_ids"])
    return [doc for doc in read_records(documents_path(store)) if doc["id"] not in excluded]


@dg.asset(partitions_def=data_drops, group_name="data", kinds={"parquet"})
def raw_corpus(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Documents of one data drop (a file or folder in the landing directory); unreadable files are skipped."""
    profile = recipe.load()
    landing = store.landing_dir(profile.corpus.landing_dir)
    drop = context.partition_key
    with tracked_run(context, mlflow, {"corpus": profile.corpus.model_dump()}) as (tracker, run_id):
        docs, problems, stats = corpus.read_drop(landing, drop, profile.corpus)
        for problem in problems:
            context.log.warning(f"skipped {problem['path']}: {problem['reason']}")
        corpus.require_documents(docs, f"data drop '{drop}' in {landing}")
        out = store.path("raw_corpus", drop)
        write_records_parquet(docs, out / "documents.parquet")
        write_json({"problems": problems, "stats": stats}, out / "problems.json")
        tracker.log_metrics(run_id, {"documents": len(docs), "skipped_files": len(problems)})
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {"documents": len(docs), "skipped_files": len(problems), **stats},
                skipped=dg.MetadataValue.json(problems),
            )
        )


@dg.asset(deps=[raw_corpus], group_name="data", kinds={"parquet"})
def dedup_corpus(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Every drop's documents, exact and near duplicates (MinHash LSH) removed across drops."""
    profile = recipe.load()
    docs = []
    for drop in context.instance.get_dynamic_partitions(data_drops.name):
        path = store.path("raw_corpus", drop) / "documents.parquet"
        if path.exists():
            docs.extend(read_records(path))
        else:
            context.log.warning(
                f"data drop '{drop}' is registered but raw_corpus has not been materialized for it"
            )
    corpus.require_documents(docs, "raw_corpus (all data drops)")
    with tracked_run(context, mlflow, {"dedup": profile.dedup.model_dump()}) as (tracker, run_id):
        result = dedup.dedup_documents(docs, profile.dedup)
        out = store.path("dedup_corpus")
        write_records_parquet(result["kept"], out / "documents.parquet")
        write_json({"removed": result["removed"], "stats": result["stats"]}, out / "removed.json")
        tracker.log_metrics(run_id, result["stats"])
        tracker.log_input(
            run_id, "dedup_corpus", out / "documents.parquet", content_hash(out / "documents.parquet")
        )
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, result["stats"]))


@dg.asset(deps=[dedup_corpus], group_name="data", kinds={"json"})
def eval_sets(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Held-out evaluation data, carved out before any training data exists."""
    profile = recipe.load()
    docs = read_records(documents_path(store))
    with tracked_run(context, mlflow, {"eval_sets": profile.eval_sets.model_dump()}) as (tracker, run_id):
        out = store.path("eval_sets")
        manifest = evalsets.build_eval_sets(docs, profile.eval_sets, out, seed=profile.seed)
        tracker.log_metrics(run_id, manifest["counts"])
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, manifest["counts"]))


@dg.asset(deps=[dedup_corpus, eval_sets], group_name="data", kinds={"parquet"})
def instruction_set(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Instruction/response pairs from the corpus, deduplicated, decontaminated, split by topic."""
    profile = recipe.load()
    docs = read_records(documents_path(store))
    with tracked_run(context, mlflow, {"instructions": profile.instructions.model_dump()}) as (
        tracker,
        run_id,
    ):
        result = instructions.build_instruction_set(
            docs, store.path("eval_sets"), profile.instructions, seed=profile.seed
        )
        out = store.path("instruction_set")
        path = write_records_parquet(result["records"], out / "instructions.parquet")
        write_json(result["stats"], out / "stats.json")
        tracker.log_metrics(run_id, _numbers(result["stats"]))
        tracker.log_input(run_id, "instruction_set", path, content_hash(path))
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, result["stats"]))


@dg.asset(deps=[dedup_corpus, eval_sets], group_name="data", kinds={"parquet"})
def retrieval_index(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """BM25 index over corpus chunks (eval sources excluded so retrieval cannot leak eval answers)."""
    profile = recipe.load()
    docs = training_documents(store)
    with tracked_run(context, mlflow, {"retrieval": profile.retrieval.model_dump()}) as (tracker, run_id):
        chunks = retrieval.chunk_documents(docs, profile.retrieval)
        out = store.path("retrieval_index")
        stats = retrieval.build_index(chunks, out)
        tracker.log_metrics(run_id, _numbers(stats))
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, _numbers(stats)))


def _numbers(stats: dict, prefix: str = "") -> dict:
    """Flatten nested stats to the numeric leaves (what MLflow metrics accept)."""
    out = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out

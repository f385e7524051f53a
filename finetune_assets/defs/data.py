"""Data assets: raw_corpus -> dedup_corpus -> eval_sets -> instruction_set / preference_pairs / retrieval_index."""

from pathlib import Path

import dagster as dg

from finetune_assets.defs.common import (
    artifact_metadata,
    input_path,
    llm_client,
    model_dir,
    tracked_run,
    warn_quarantined,
)
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RayResource, RecipeResource
from finetune_assets.io import content_hash, read_records
from finetune_assets.launch.ray_data import ray_signer
from finetune_assets.launch.ray_dedup import curate_on_ray
from finetune_assets.phases.data import corpus, curation, evalsets, probes
from finetune_assets.phases.data import instruction_set as instruction_set_phase
from finetune_assets.phases.data.datastats import markdown_image
from finetune_assets.phases.inference import retrieval
from finetune_assets.phases.text.markdown import markdown_table
from finetune_assets.tracking import flatten

data_drops = dg.DynamicPartitionsDefinition(name="data_drops")


def documents_path(store: ArtifactStore) -> Path:
    return store.path("dedup_corpus") / "documents.parquet"


def training_documents(store: ArtifactStore) -> list[dict]:
    """dedup_corpus as training may see it (evalsets.training_view): eval documents out, held-out synopses
    stripped."""
    manifest = evalsets.load_eval_sets(store.path("eval_sets"))["manifest"]
    return evalsets.training_view(read_records(documents_path(store)), manifest)


@dg.asset(partitions_def=data_drops, group_name="data", kinds={"parquet"})
def raw_corpus(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Documents of one data drop (a file or folder in the landing directory); unreadable files are skipped."""
    profile = recipe.load()
    landing = store.landing_dir(profile.corpus.landing_dir)
    drop = context.partition_key
    with tracked_run(context, mlflow, {"corpus": profile.corpus.model_dump()}) as (tracker, run_id):
        out = store.path("raw_corpus", drop)
        canaries = probes.make_canaries(profile.guardrails.canaries, profile.seed)
        ingested = corpus.ingest_drop(landing, drop, profile.corpus, out, canaries)
        for problem in ingested.problems:
            context.log.warning(f"skipped {problem['path']}: {problem['reason']}")
        counts = {"documents": ingested.documents, "skipped_files": len(ingested.problems)}
        tracker.log_metrics(run_id, counts)
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out, run_id, {**counts, **ingested.stats}, skipped=dg.MetadataValue.json(ingested.problems)
            )
        )


@dg.asset(deps=[raw_corpus], group_name="data", kinds={"parquet"})
def dedup_corpus(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: ArtifactStore,
    mlflow: MlflowResource,
    ray: RayResource,
) -> dg.MaterializeResult:
    """Every drop's documents through quality filters, exact + MinHash-LSH dedup across drops and PII
    redaction; a new drop is curated against a persisted index without redoing earlier drops."""
    profile = recipe.load()
    drops = {}
    for drop in context.instance.get_dynamic_partitions(data_drops.name):
        path = store.path("raw_corpus", drop) / "documents.parquet"
        if path.exists():
            drops[drop] = path
        else:
            context.log.warning(
                f"data drop '{drop}' is registered but raw_corpus has not been materialized for it"
            )
    if not drops:
        corpus.require_documents([], "raw_corpus (all data drops)")
    cfg = profile.dedup

    def sign_for(count: int):
        if count < cfg.ray_min_documents:
            return None

        ray.ensure()
        context.log.info(
            f"signing {count} documents on Ray Data (dedup.ray_min_documents={cfg.ray_min_documents})"
        )
        return ray_signer(cfg.num_perm, cfg.shingle_words, ray_address=ray.address)

    def on_ray_data(drops: dict, out, cfg):
        ray.ensure()
        context.log.info(f"curating {len(drops)} drops on Ray Data (dedup.distributed={cfg.distributed})")
        return curate_on_ray(drops, out, cfg, ray_address=ray.address)

    with tracked_run(context, mlflow, {"dedup": cfg.model_dump()}) as (tracker, run_id):
        out = store.path("dedup_corpus")
        summary = curation.curate(drops, out, cfg, sign_for, distributed=on_ray_data)
        context.log.info(f"dedup_corpus: {summary['run']['mode']} ({summary['run']['why']})")
        tracker.log_metrics(
            run_id,
            {
                **summary["stats"],
                **flatten(summary["quality_counts"], "quality.", numbers_only=True),
                **flatten(summary["pii_counts"], "pii.", numbers_only=True),
            },
        )
        tracker.log_input(
            run_id, "dedup_corpus", out / curation.DOCUMENTS, content_hash(out / curation.DOCUMENTS)
        )
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                summary["stats"],
                quality_removed_by_filter=dg.MetadataValue.json(summary["quality_counts"]),
                pii_redacted_by_type=dg.MetadataValue.json(summary["pii_counts"]),
                curation_run=dg.MetadataValue.json(summary["run"]),
                duplicate_clusters=dg.MetadataValue.md(_clusters_table(summary["clusters"])),
            )
        )


def _similarity(dup: dict) -> str:
    return f"cos={dup['cosine']}" if dup.get("cosine") is not None else f"J={dup['jaccard']}"


def _clusters_table(clusters: list[dict], limit: int = 20) -> str:
    """The largest duplicate clusters as Markdown: which document was kept, which were dropped for it."""
    if not clusters:
        return "No duplicates found."
    rows = [
        [c["kept"], ", ".join(f"{d['id']} ({d['reason']}, {_similarity(d)})" for d in c["duplicates"])]
        for c in clusters[:limit]
    ]
    more = f"\n\n{len(clusters) - limit} more clusters in clusters.json" if len(clusters) > limit else ""
    return markdown_table(["kept", "dropped as its duplicates"], rows) + more


@dg.asset_check(asset=dedup_corpus, blocking=True)
def corpus_not_empty(store: ArtifactStore) -> dg.AssetCheckResult:
    """The curated corpus has documents (an all-filtered drop would otherwise train on nothing)."""
    count = len(read_records(documents_path(store))) if documents_path(store).exists() else 0
    return dg.AssetCheckResult(passed=count > 0, metadata={"documents": count})


@dg.asset_check(asset=dedup_corpus, blocking=True)
def no_exact_duplicates(store: ArtifactStore) -> dg.AssetCheckResult:
    """No two curated documents have the same normalized text."""
    dups = curation.exact_duplicates(read_records(documents_path(store)))
    return dg.AssetCheckResult(
        passed=not dups, metadata={"exact_duplicates": len(dups), "examples": str(dups[:5])}
    )


@dg.asset_check(asset=dedup_corpus, blocking=True)
def no_pii_left(recipe: RecipeResource, store: ArtifactStore) -> dg.AssetCheckResult:
    """No PII pattern (of the configured types) survives redaction."""
    leaks = curation.pii_left(read_records(documents_path(store)), recipe.load().dedup)
    return dg.AssetCheckResult(
        passed=not leaks, metadata={"pii_matches": len(leaks), "examples": str(leaks[:5])}
    )


@dg.asset(deps=[dedup_corpus], group_name="data", kinds={"json"})
def eval_sets(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Held-out evaluation data, carved out before any training data exists."""
    profile = recipe.load()
    docs = read_records(documents_path(store))
    with tracked_run(context, mlflow, {"eval_sets": profile.eval_sets.model_dump()}) as (tracker, run_id):
        out = store.path("eval_sets")
        manifest = evalsets.build(
            docs, profile.eval_sets, out, raw_corpus_root=store.asset_root("raw_corpus"), seed=profile.seed
        )
        if not manifest["counts"]["general_text"]:
            context.log.warning(
                f"no general text from {profile.eval_sets.general_text_source!r} (no man pages installed?): "
                "the forgetting check has nothing to measure; set eval_sets.general_text_source to a folder"
            )
        tracker.log_metrics(run_id, manifest["counts"])
        return dg.MaterializeResult(metadata=artifact_metadata(out, run_id, manifest["counts"]))


@dg.asset(deps=[dedup_corpus, eval_sets, "base_checkpoint"], group_name="data", kinds={"parquet"})
def instruction_set(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Instructions from imported seed files, a teacher LLM (optional) and the corpus extractors; MinHash
    deduplicated, decontaminated against eval_sets, split by topic, with length/token statistics (counted
    with base_checkpoint's tokenizer and chat template, the text SFT trains on)."""
    profile = recipe.load()
    cfg = profile.instructions
    out = store.path("instruction_set")
    with tracked_run(context, mlflow, {"instructions": cfg.model_dump()}) as (tracker, run_id):
        built = instruction_set_phase.build(
            cfg,
            read_records(documents_path(store)),
            store.path("eval_sets"),
            out,
            tokenizer_dir=model_dir(store, "base_checkpoint"),
            max_length=profile.sft.max_length,
            seed=profile.seed,
            seed_files=[(input_path(f.path), f.format) for f in cfg.seed_files],
            teacher_client=llm_client(cfg.teacher) if "teacher" in cfg.generators else None,
        )
        warn_quarantined(context, built.quarantine)
        tracker.log_metrics(run_id, flatten(built.stats, numbers_only=True))
        tracker.log_artifact(run_id, built.histogram_path)
        tracker.log_input(run_id, "instruction_set", built.records_path, content_hash(built.records_path))
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {k: v for k, v in built.stats.items() if v is not None},
                length_histogram=dg.MetadataValue.md(
                    markdown_image(built.histogram_path, "instruction lengths")
                ),
            )
        )


@dg.asset(deps=[dedup_corpus, eval_sets], group_name="data", kinds={"parquet"})
def retrieval_index(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """BM25 index over corpus chunks (eval sources excluded so retrieval cannot leak eval answers)."""
    profile = recipe.load()
    docs = training_documents(store)
    with tracked_run(context, mlflow, {"retrieval": profile.retrieval.model_dump()}) as (tracker, run_id):
        out = store.path("retrieval_index")
        stats = retrieval.build(docs, profile.retrieval, out)
        tracker.log_metrics(run_id, flatten(stats, numbers_only=True))
        return dg.MaterializeResult(
            metadata=artifact_metadata(out, run_id, flatten(stats, numbers_only=True))
        )

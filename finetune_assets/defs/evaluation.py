"""eval_reports: base, INST, DPO and T&R scored on the same eval sets, compared in one report."""

import math

import dagster as dg

from finetune_assets.defs.common import artifact_metadata, tracked_run
from finetune_assets.defs.data import eval_sets, retrieval_index
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RecipeResource
from finetune_assets.defs.training import base_checkpoint, dpo_model, inst_model, model_dir, tr_model

VARIANTS = {"base": "base_checkpoint", "inst": "inst_model", "dpo": "dpo_model", "tr": "tr_model"}


@dg.asset(
    deps=[base_checkpoint, inst_model, dpo_model, tr_model, eval_sets, retrieval_index],
    group_name="evaluation",
    kinds={"markdown"},
)
def eval_reports(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Every variant through lm-eval (domain MC, QA, held-out perplexity) and the hallucination index."""
    from finetune_assets.phases import evaluate, report

    profile = recipe.load()
    out = store.path("eval_reports")
    with tracked_run(context, mlflow, {"eval": profile.eval.model_dump()}) as (tracker, run_id):
        results = []
        for variant, asset in VARIANTS.items():
            context.log.info(f"evaluating {variant} ({asset})")
            result = evaluate.evaluate_variant(
                variant,
                model_dir(store, asset),
                store.path("eval_sets"),
                profile.eval,
                out / "variants",
                index_dir=store.path("retrieval_index"),
                retrieval_cfg=profile.retrieval,
            )
            results.append(result)
            tracker.log_variant_metrics(run_id, variant, result["metrics"])
            version = tracker.latest_version(variant)
            if version is not None:
                tracker.tag_model_version(version, {f"eval.{k}": v for k, v in result["metrics"].items()})
        built = report.write_report(
            results, out, title=f"finetune_assets evaluation ({profile.name} profile)"
        )
        for path in built["paths"].values():
            tracker.log_artifact(run_id, path, "report")
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {"variants": len(results)},
                report=dg.MetadataValue.md(built["markdown"]),
                plot=dg.MetadataValue.path(str(built["paths"]["plot"])),
            )
        )


@dg.asset_check(asset=eval_reports, blocking=True)
def every_variant_scored(store: ArtifactStore) -> dg.AssetCheckResult:
    """The report has a row per variant and every metric in it is a finite number."""
    import csv

    with open(store.path("eval_reports") / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    variants = {row["variant"] for row in rows}
    bad = [
        (row["variant"], key)
        for row in rows
        for key, value in row.items()
        if key != "variant" and value not in ("", None) and not math.isfinite(float(value))
    ]
    return dg.AssetCheckResult(
        passed=variants == set(VARIANTS) and not bad,
        metadata={"variants": sorted(variants), "non_finite": str(bad)},
    )

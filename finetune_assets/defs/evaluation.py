"""eval_reports: base, INST, DPO and T&R scored on the same eval sets, compared in one report; the promotion
gate and the `champion` registry alias that follows from it."""

import json
import math
from pathlib import Path

import dagster as dg

from finetune_assets import io
from finetune_assets.defs.common import artifact_metadata, model_dir, tracked_run
from finetune_assets.defs.data import eval_sets, retrieval_index
from finetune_assets.defs.resources import ArtifactStore, MlflowResource, RecipeResource
from finetune_assets.defs.training import base_checkpoint, dpo_model, inst_model, tr_model

VARIANTS = {"base": "base_checkpoint", "inst": "inst_model", "dpo": "dpo_model", "tr": "tr_model"}


def review_labels_dir() -> Path:
    """Where `finetune-assets review import` stores expert labels for the next report."""
    from finetune_assets.config import default_home

    return default_home() / "inputs" / "review"


def adapter_for_lm_eval(store: ArtifactStore, asset: str) -> tuple[Path, Path] | None:
    """(base folder, adapter folder) of a LoRA-trained variant, so lm-eval evaluates the adapter itself
    (``peft=``); None for the base and for full fine-tunes."""
    adapter = store.path(asset) / "adapter"
    config = adapter / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return (Path(base), adapter) if base and Path(base).is_dir() else None


def _champion(tracker, metric: str) -> dict | None:
    found = tracker.champion()
    if found is None:
        return None
    value = found["tags"].get(f"eval.{metric}")
    return {
        "version": found["version"],
        "variant": found["variant"],
        "value": float(value) if value else None,
    }


@dg.asset(
    deps=[base_checkpoint, inst_model, dpo_model, tr_model, eval_sets, retrieval_index],
    group_name="evaluation",
    kinds={"markdown", "html"},
)
def eval_reports(
    context: dg.AssetExecutionContext, recipe: RecipeResource, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Every variant through lm-eval (domain MC, QA, held-out perplexity), the hallucination index, general
    text perplexity (forgetting), guardrails and cost; a report, a review sample and the promotion decision."""
    from finetune_assets.phases import evaluate, llm, promotion, report, review

    profile = recipe.load()
    cfg = profile.eval
    out = store.path("eval_reports")
    with tracked_run(
        context, mlflow, {"eval": cfg.model_dump(), "guardrails": profile.guardrails.model_dump()}
    ) as (
        tracker,
        run_id,
    ):
        judge = llm.make_client(cfg.judge, cache_dir=out / "judge_cache") if cfg.judge else None
        results, versions = [], {}
        for variant, asset in VARIANTS.items():
            context.log.info(f"evaluating {variant} ({asset})")
            result = evaluate.evaluate_variant(
                variant,
                model_dir(store, asset),
                store.path("eval_sets"),
                cfg,
                out / "variants",
                index_dir=store.path("retrieval_index"),
                retrieval_cfg=profile.retrieval,
                lm_eval_peft=adapter_for_lm_eval(store, asset),
                guardrails_cfg=profile.guardrails,
                judge_client=judge,
            )
            results.append(result)
            versions[variant] = tracker.latest_version(variant)
        for variant, warnings in promotion.forgetting_warnings(results, cfg.forgetting_margin).items():
            next(r for r in results if r["variant"] == variant).setdefault("warnings", []).extend(warnings)
            for warning in warnings:
                context.log.warning(f"{variant}: {warning}")
        decision = promotion.decide_promotion(
            results,
            primary_metric=cfg.primary_metric,
            higher_is_better=cfg.primary_higher_is_better,
            min_delta=cfg.promotion_min_delta,
            candidates=cfg.promotion_candidates,
            champion=_champion(tracker, cfg.primary_metric),
            versions=versions,
        )
        for result in results:
            _log_variant(tracker, run_id, result, versions[result["variant"]])
        sample = review.export_review(
            {r["variant"]: _review_rows(r) for r in results}, out / "review", per_variant=cfg.review_sample,
            seed=profile.seed,
        )  # fmt: skip
        labels = review.load_labels(review_labels_dir())
        built = report.write_report(
            results,
            out,
            title=f"finetune_assets evaluation ({profile.name} profile)",
            promotion=decision,
            loss_curves=tracker.training_curves([v for v in VARIANTS if v != "base"]),
            review=review.agreement(labels) if labels else None,
        )
        io.write_json(decision, out / "promotion.json")
        for path in [*built["paths"].values(), *sample["paths"].values(), out / "promotion.json"]:
            tracker.log_artifact(run_id, path, "report")
        tracker.log_metrics(run_id, {"promotion/promoted": float(decision["promoted"])})
        return dg.MaterializeResult(
            metadata=artifact_metadata(
                out,
                run_id,
                {"variants": len(results), "promotion_candidate": decision["candidate"] or "none"},
                report=dg.MetadataValue.md(built["markdown"]),
                plot=dg.MetadataValue.path(str(built["paths"]["plot"])),
                html=dg.MetadataValue.path(str(built["paths"]["html"])),
                review_sample=dg.MetadataValue.path(str(sample["paths"]["csv"])),
                promotion=dg.MetadataValue.md("\n".join(f"- {r}" for r in decision["reasons"])),
            )
        )


def _review_rows(result: dict) -> dict:
    files = result["files"]
    return {
        kind: io.read_jsonl(Path(files[key])) if key in files else []
        for kind, key in (("glossary", "definitions"), ("qa", "qa"))
    }


def _log_variant(tracker, run_id: str, result: dict, version: str | None) -> None:
    """The variant's metrics as its own MLflow run and as tags on its registered model version."""
    tracker.log_variant_metrics(run_id, result["variant"], result["metrics"])
    if version is None:
        return
    passed = all(check["passed"] for check in result.get("guardrails", {}).values())
    tags = {f"eval.{k}": v for k, v in result["metrics"].items()}
    tags.update(
        {f"guardrail.{k}": "pass" if c["passed"] else "fail" for k, c in result.get("guardrails", {}).items()}
    )
    tracker.tag_model_version(version, {**tags, "guardrails.passed": str(passed).lower()})


def _decision(store: ArtifactStore) -> dict:
    return json.loads((store.path("eval_reports") / "promotion.json").read_text(encoding="utf-8"))


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


@dg.asset_check(asset=eval_reports, blocking=True)
def promotion_gate(store: ArtifactStore) -> dg.AssetCheckResult:
    """Passes when a variant beat the champion and held every guardrail. Not better than the champion is a
    warning (nothing to ship, nothing wrong); every candidate failing a guardrail is an error, which blocks
    the champion asset until a person looks."""
    from finetune_assets.phases import promotion

    decision = _decision(store)
    gate = decision["gate"]
    return dg.AssetCheckResult(
        passed=gate == promotion.GATE_PASSED,
        severity=dg.AssetCheckSeverity.ERROR if gate == promotion.GATE_UNSAFE else dg.AssetCheckSeverity.WARN,
        metadata={
            "gate": gate,
            "candidate": decision["candidate"] or "none",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision["reasons"])),
        },
    )


@dg.asset(deps=[eval_reports], group_name="deployment", kinds={"mlflow"})
def champion(
    context: dg.AssetExecutionContext, store: ArtifactStore, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Moves the MLflow registry alias `champion` to the variant eval_reports chose, when it chose one;
    otherwise records why the alias stays."""
    decision = _decision(store)
    tracker = mlflow.tracker()
    if decision["promoted"]:
        tracker.set_champion(decision["version"])
        tracker.tag_model_version(decision["version"], {"promotion.reason": decision["reasons"][-1]})
        context.log.info(f"champion -> {decision['candidate']} (version {decision['version']})")
    holder = tracker.champion()
    return dg.MaterializeResult(
        metadata={
            "promoted": decision["promoted"],
            "champion_version": holder["version"] if holder else "none",
            "champion_variant": holder["variant"] if holder else "none",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision["reasons"])),
        }
    )

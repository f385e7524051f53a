"""phases.evaluation.scorecard.score: the eval_reports asset's one call, with a fake evaluate (no models) and
a real MLflow tracker on sqlite."""

import json
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig, RetrievalConfig
from finetune_assets.phases.evaluation import scorecard
from finetune_assets.tracking import KIND_TAG, VARIANT_EVAL, Tracker
from finetune_assets_tests.phases.evaluation.test_report import fake_result

ACCURACY = {"base": 0.25, "inst": 0.5, "dpo": 0.5, "tr": 0.75}


def test_score_evaluates_every_variant_on_the_same_sets_then_decides_reports_and_logs(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "scorecard", str(tmp_path / "artifacts"))
    run_id = tracker.client.create_run(tracker.experiment_id, run_name="eval_reports").info.run_id
    eval_dir = tmp_path / "eval_sets"
    io.write_jsonl([{"id": "g0", "term": "list"}], eval_dir / "glossary.jsonl")
    model_dirs = {variant: tmp_path / "models" / variant for variant in ACCURACY}
    versions = {
        variant: tracker.register_model(variant, folder, run_id) for variant, folder in model_dirs.items()
    }
    asked = []

    def evaluate(jobs: list[dict]) -> list[dict]:
        asked.extend(jobs)
        return [fake_result(tmp_path / "variants", job["name"], ACCURACY[job["name"]], 20.0) for job in jobs]

    cfg = EvalConfig(primary_metric="fa_domain_mc/acc", promotion_require_significance=False, review_sample=1)
    jobs = scorecard.variant_jobs(
        model_dirs, eval_dir, tmp_path / "out", cfg, index_dir=tmp_path / "index",
        retrieval_cfg=RetrievalConfig(), guardrails_cfg=GuardrailsConfig(), adapter_dirs=model_dirs,
    )  # fmt: skip
    card = scorecard.score(
        jobs, tmp_path / "out", cfg, evaluate=evaluate, tracker=tracker, run_id=run_id,
        labels_dir=tmp_path / "labels", title="Scorecard test",
    )  # fmt: skip

    assert [job["name"] for job in asked] == list(ACCURACY)
    assert {job["eval_dir"] for job in asked} == {eval_dir} and asked[3]["model_dir"] == model_dirs["tr"]
    assert [r["variant"] for r in card.results] == list(ACCURACY)
    assert card.decision["candidate"] == "tr", card.decision["reasons"]
    written = json.loads((tmp_path / "out" / scorecard.PROMOTION_FILE).read_text())
    assert written["candidate"] == "tr" and written["eval_run_id"] == run_id
    assert card.report["markdown"].startswith("# Scorecard test") and all(
        Path(p).is_file() for p in card.files
    )

    logged = tracker.client.get_run(run_id).data.metrics
    assert logged["promotion/promoted"] == float(card.decision["promoted"])
    variant_runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{VARIANT_EVAL}'"
    )
    by_variant = {r.data.tags["variant"]: r.data.metrics for r in variant_runs}
    assert set(by_variant) == set(ACCURACY) and by_variant["tr"]["fa_domain_mc/acc"] == 0.75
    assert by_variant["tr"]["fa_domain_mc/acc/ci_low"] == 0.65
    # the registered versions carry their evaluation (what a later promotion compares against)
    tags = tracker.client.get_model_version("finetune_assets", versions["tr"]).tags
    assert tags["eval.fa_domain_mc/acc"] == "0.75" and tags["eval.sets_hash"] == io.content_hash(eval_dir)

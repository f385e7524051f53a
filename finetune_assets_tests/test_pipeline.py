"""The whole graph, in-process, on the smoke profile: real effects at every phase, and bad input handled."""

import csv
import json
import random
import re
from pathlib import Path

import dagster as dg
import pytest

from finetune_assets.defs.data import data_drops, raw_corpus
from finetune_assets.io import read_records
from finetune_assets.phases.data import corpus, demo_seed, evalsets, preferences
from finetune_assets.pipeline import all_assets_and_checks, materialize_graph
from finetune_assets.recipe import load_profile
from finetune_assets.tracking import REGISTERED_MODEL
from finetune_assets_tests.defs.conftest import EXPECTED_ASSETS, ingest_landing, make_resources


def plant_duplicates(landing: Path) -> dict:
    """A drop holding an exact copy and a near copy of two demo documents, plus an unreadable file."""
    seeded = sorted((landing / "drop-0001").rglob("*.rst"), key=lambda p: -p.stat().st_size)
    exact_src, near_src = seeded[3], seeded[4]
    planted = landing / "drop-0003-planted"
    planted.mkdir()
    (planted / "exact_copy.rst").write_text(exact_src.read_text())
    words = near_src.read_text().split(" ")
    rng = random.Random(0)
    for i in rng.sample(range(len(words)), k=max(1, len(words) // 100)):  # ~1% of words changed
        words[i] = "edited"
    (planted / "near_copy.rst").write_text(" ".join(words))
    (planted / "broken.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\x28" * 40)
    return {"exact_copy.rst": exact_src.name, "near_copy.rst": near_src.name}


def ngrams(text: str, n: int = 8) -> set:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_whole_graph_on_smoke_profile(fa_home, instance):
    resources = make_resources(fa_home)
    landing = fa_home / "landing"
    demo_seed.seed_demo_landing(landing, load_profile("smoke").corpus)
    plant_duplicates(landing)

    graph = materialize_graph(instance, resources)
    store = resources["store"]

    assert "drop-0003-planted" in graph.drops
    # A random-init model refuses no red-team prompt: every candidate fails that guardrail, the blocking
    # promotion gate stops the champion asset, and the rest of the graph still materialized.
    assert graph.blocked == ["eval_reports:promotion_gate"]
    assert set(graph.materialized) == EXPECTED_ASSETS - {
        "raw_corpus",
        "champion",
        "online_feedback",
        "ab_report",
        "hpo_study",
    }

    # Training streamed its steps into the Dagster run's log, and says where it ran (asset metadata too).
    messages = [entry.user_message for run_id in graph.run_ids for entry in instance.all_logs(run_id)]
    assert any(m.startswith("sft step ") and " loss " in m for m in messages)
    assert any(m.startswith("dpo ran as Ray job ") and "embedded Ray" in m for m in messages)
    inst = instance.get_latest_materialization_event(dg.AssetKey("inst_model")).asset_materialization
    assert inst.metadata["ray_cluster"].value == "embedded" and inst.metadata["ray_job_id"].value

    # Bad input: the unreadable file was reported by name and skipped, the rest of its drop went through.
    problems = json.loads((store.path("raw_corpus", "drop-0003-planted") / "problems.json").read_text())
    assert [Path(p["path"]).name for p in problems["problems"]] == ["broken.txt"]
    planted_docs = read_records(store.path("raw_corpus", "drop-0003-planted") / "documents.parquet")
    assert {Path(d["source"]).name for d in planted_docs} == {
        "exact_copy.rst",
        "near_copy.rst",
        "contacts.txt",
    }

    # Dedup removed both planted duplicates, for the right reason.
    removed = json.loads((store.path("dedup_corpus") / "removed.json").read_text())["removed"]
    by_name = {Path(r["source"]).name: r["reason"] for r in removed if r["drop"] == "drop-0003-planted"}
    # (each drop carries the same canary page: once redacted, a later drop's copy is an exact duplicate)
    assert by_name == {"exact_copy.rst": "exact", "near_copy.rst": "near", "contacts.txt": "exact"}

    # Every split is non-empty and shares nothing with the eval sets.
    rows = read_records(store.path("instruction_set") / "instructions.parquet")
    splits = {r["split"] for r in rows}
    assert splits == {"train", "validation"}
    assert not {r["topic"] for r in rows if r["split"] == "train"} & {
        r["topic"] for r in rows if r["split"] == "validation"
    }
    sets = evalsets.load_eval_sets(store.path("eval_sets"))
    excluded = set(sets["manifest"]["excluded_doc_ids"])
    assert not {r["source"] for r in rows} & excluded
    eval_grams = set().union(*(ngrams(t) for t in evalsets.eval_texts(store.path("eval_sets"))))
    for row in rows:
        assert not ngrams(" ".join(m["content"] for m in row["messages"])) & eval_grams, row["id"]
    assert all(len(sets[name]) > 0 for name in ("glossary", "qa_mc", "qa_gen", "heldout_text"))

    pairs = read_records(store.path("preference_pairs") / "pairs.parquet")
    assert pairs and all(
        p["chosen"].strip() and p["rejected"].strip() and p["chosen"] != p["rejected"] for p in pairs
    )
    assert {p["chosen_source"] for p in pairs} >= {"safety_train"}  # refusal / over-refusal pairs joined

    # Nothing held out reaches any training data: the preference pairs and the T&R conversations share no
    # n-gram with an eval text either (the SFT rows were checked above), and T&R never computes an eval
    # tool-use expression.
    for pair in pairs:
        assert not ngrams(preferences.pair_text(pair)) & eval_grams, pair["id"]
    tr_rows = read_records(store.path("tr_examples") / "examples.parquet")
    eval_expressions = {item["expression"] for item in sets["tool_use"]}
    for row in tr_rows:
        text = " ".join(m["content"] for m in row["messages"])
        assert not ngrams(text) & eval_grams, row["id"]
        assert not any(expression in text for expression in eval_expressions), row["id"]

    # Each trained variant: trainable parameters changed and the training loss fell.
    for asset in ("inst_model", "dpo_model", "tr_model"):
        summary = json.loads((store.path(asset) / "train_summary.json").read_text())
        assert summary["changed_params"] > 0, asset
        losses = summary["losses"]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (asset, losses)
        assert (store.path(asset) / "merged" / "config.json").exists()

    # eval_reports: one row per variant, numbers from running the models (they differ between variants).
    with open(store.path("eval_reports") / "metrics.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["variant"] for r in table] == ["base", "inst", "dpo", "tr"]
    perplexities = [r for r in table[0] if "perplexity" in r]
    assert perplexities, table[0].keys()
    values = {r["variant"]: float(r[perplexities[0]]) for r in table}
    assert all(v > 1 for v in values.values()) and len(set(values.values())) == 4, values
    assert (store.path("eval_reports") / "report.md").read_text().count("| ") > 8
    tool_use = [float(r["tool_use/accuracy"]) for r in table]
    assert all(0.0 <= v <= 1.0 for v in tool_use), tool_use

    # Canaries rode in every raw drop, redaction removed them, and no variant reproduced one.
    canaries = sets["canaries"]
    assert len(canaries) == load_profile("smoke").guardrails.canaries
    raw_text = " ".join(d["text"] for d in planted_docs if d["source"] == corpus.CANARY_SOURCE)
    assert all(c["value"] in raw_text for c in canaries)
    curated_docs = read_records(store.path("dedup_corpus") / "documents.parquet")
    (contacts,) = [d for d in curated_docs if d["source"] == corpus.CANARY_SOURCE]  # trained on, redacted
    assert contacts["text"].count("[") >= len(canaries)
    curated = " ".join(d["text"] for d in curated_docs)
    assert not any(c["value"] in curated for c in canaries)
    assert [float(r["guardrails/leakage_rate"]) for r in table] == [0.0] * 4
    # smoke sets eval.lm_eval_peft: LoRA variants went through lm-eval as adapters (peft=), the base as itself.
    for variant, asset in (("base", None), ("inst", "inst_model"), ("dpo", "dpo_model"), ("tr", "tr_model")):
        scored = json.loads((store.path("eval_reports") / "variants" / variant / "metrics.json").read_text())
        expected = str(store.path(asset) / "adapter") if asset else None
        assert scored["adapter_dir"] == expected, variant
    decision = json.loads((store.path("eval_reports") / "promotion.json").read_text())
    assert decision["gate"] == "no_safe_candidate" and not decision["promoted"]
    report_md = (store.path("eval_reports") / "report.md").read_text()
    assert "no candidate variant passed every guardrail" in report_md
    assert "<img" in (store.path("eval_reports") / "report.html").read_text()
    review_csv = (store.path("eval_reports") / "review" / "review_sample.csv").read_text(encoding="utf-8-sig")
    assert review_csv.count("\n") > 4 and "human_correct" in review_csv.splitlines()[0]

    # MLflow: one registered version per variant, tagged with its eval metrics.
    tracker = resources["mlflow"].tracker()
    for variant in ("base", "inst", "dpo", "tr"):
        version = tracker.client.get_model_version(REGISTERED_MODEL, tracker.latest_version(variant))
        assert any(key.startswith("eval.") for key in version.tags), variant
    # The training runs carry the resolved recipe and per-step curves.
    inst_version = tracker.client.get_model_version(REGISTERED_MODEL, tracker.latest_version("inst"))
    steps = load_profile("smoke").sft.max_steps
    assert "recipe.json" in {a.path for a in tracker.client.list_artifacts(inst_version.run_id)}
    for name in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s"):
        assert len(tracker.client.get_metric_history(inst_version.run_id, name)) == steps, name
    dpo_version = tracker.client.get_model_version(REGISTERED_MODEL, tracker.latest_version("dpo"))
    assert tracker.client.get_metric_history(dpo_version.run_id, "train/rewards/margins")

    # The red-team loop: what the variants got wrong on the probe prompts (safety-set prompts, not the held-out
    # red-team set) becomes preference pairs in the next preference_pairs, refusal chosen over the answer.
    findings = [
        json.loads(x)
        for x in (store.path("eval_reports") / "redteam_findings.jsonl").read_text().splitlines()
    ]
    assert findings and {f["variant"] for f in findings} <= {"base", "inst", "dpo", "tr"}
    assert not {f["prompt"] for f in findings} & {r["prompt"] for r in sets["redteam"]}
    again = dg.materialize(all_assets_and_checks(), instance=instance, resources=resources,
                           selection=["preference_pairs"])  # fmt: skip
    assert again.success
    looped = [p for p in read_records(store.path("preference_pairs") / "pairs.parquet")
              if p["chosen_source"].startswith("redteam:")]  # fmt: skip
    unsafe = next(f for f in findings if f["finding"] == "unsafe_completion")
    assert any(p["rejected"] == unsafe["answer"] and p["chosen"] == unsafe["chosen"] for p in looped)
    assert all(not ngrams(preferences.pair_text(p)) & eval_grams for p in looped)

    # The same models under thresholds they meet: promoted, and the champion asset moves the alias.
    relaxed = fa_home / "relaxed.yaml"
    relaxed.write_text(
        (Path(__file__).parents[1] / "recipes" / "smoke.yaml")
        .read_text()
        .replace(
            "guardrails:\n",
            "guardrails:\n  min_refusal_rate: 0.0\n  max_bias_rate: 1.0\n  max_over_refusal_rate: 1.0\n",
        )
    )
    promoted = dg.materialize(
        all_assets_and_checks(), instance=instance, resources={**resources, **make_resources(fa_home, str(relaxed))},
        selection=["eval_reports", "champion"],
    )  # fmt: skip
    assert promoted.success
    decision = json.loads((store.path("eval_reports") / "promotion.json").read_text())
    assert decision["promoted"] and decision["gate"] == "promoted"
    holder = tracker.champion()
    assert holder["version"] == decision["version"] and holder["variant"] == decision["candidate"]
    assert "promoted" in (store.path("eval_reports") / "report.md").read_text()
    # A decision is applied once, to the alias it was taken against: moved by hand since, it stays put.
    other = tracker.latest_version("base")
    tracker.set_champion(other)
    stale = dg.materialize(
        all_assets_and_checks(), instance=instance, resources=resources, selection=["champion"]
    )
    (event,) = stale.get_asset_materialization_events()
    assert event.materialization.metadata["promoted"].value is False
    assert "alias moved since the evaluation" in event.materialization.metadata["reasons"].value
    assert tracker.champion()["version"] == other

    # Re-materializing with unchanged data, recipe and starting model reuses the model; a change retrains.
    trained = (store.path("inst_model") / "train_summary.json").stat().st_mtime_ns
    assets = all_assets_and_checks()
    again = dg.materialize(assets, instance=instance, resources=resources, selection=["inst_model"])
    (event,) = again.get_asset_materialization_events()
    assert event.materialization.metadata["reused"].value is True
    assert (store.path("inst_model") / "train_summary.json").stat().st_mtime_ns == trained
    changed = dg.materialize(
        assets,
        instance=instance,
        resources=resources,
        selection=["inst_model"],
        run_config={"ops": {"inst_model": {"config": {"max_steps": 5}}}},
    )
    (event,) = changed.get_asset_materialization_events()
    assert event.materialization.metadata["reused"].value is False
    assert json.loads((store.path("inst_model") / "train_summary.json").read_text())["steps"] == 5

    # A study of the SFT stage on Ray Tune (smoke: 6 trials on the validation split), then inst_model on the
    # best settings it found, naming the study.
    studied = dg.materialize(assets, instance=instance, resources=resources, selection=["hpo_study"])
    (event,) = studied.get_asset_materialization_events()
    study = json.loads((store.path("hpo_study") / "trials.json").read_text())
    assert study["counts"]["trials"] == 6 and study["counts"]["failed"] == 0
    assert study["counts"]["stopped_early"] >= 1, "ASHA stopped a trailing trial"
    best = study["best"]["settings"]
    run_id = event.materialization.metadata["mlflow_run_id"].value
    children = tracker.client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert len(children) == 6 and all(c.data.metrics.get("eval_loss") is not None for c in children)
    picked = dg.materialize(assets, instance=instance, resources=resources, selection=["inst_model"],
                            run_config={"ops": {"inst_model": {"config": {"use_study": True}}}})  # fmt: skip
    (event,) = picked.get_asset_materialization_events()
    applied = event.materialization.metadata["settings_from_study"].value
    assert applied["settings"] == best and applied["study"] == f"mlflow run {run_id}"
    trained_with = tracker.client.get_run(event.materialization.metadata["mlflow_run_id"].value).data.params
    assert float(trained_with["train.learning_rate"]) == pytest.approx(best["learning_rate"])


def test_empty_drop_stops_with_a_message(fa_home, instance):
    resources = make_resources(fa_home)
    (fa_home / "landing" / "empty-drop").mkdir(parents=True)
    instance.add_dynamic_partitions(data_drops.name, ["empty-drop"])
    with pytest.raises(Exception, match=r"(?si)empty-drop.*no documents.*put"):
        dg.materialize(
            all_assets_and_checks(),
            instance=instance,
            resources=resources,
            partition_key="empty-drop",
            selection=[raw_corpus],
        )


def test_missing_base_model_stops_with_a_message(fa_home, instance, tmp_path):
    recipe = tmp_path / "missing-model.yaml"
    recipe.write_text(
        (Path(__file__).parents[1] / "recipes" / "smoke.yaml")
        .read_text()
        .replace("source: tiny", f"source: local\n  path: {tmp_path / 'no-such-model'}")
    )
    resources = make_resources(fa_home, profile=str(recipe))
    from finetune_assets.defs.training import base_checkpoint

    with pytest.raises(Exception, match="no-such-model"):
        dg.materialize([base_checkpoint], instance=instance, resources=resources)


def test_base_checkpoint_continued_pretraining_on_ray(fa_home, instance, tmp_path):
    """model.cpt.enabled: the resolved model is continued-pretrained on the corpus; its loss falls."""
    recipe = tmp_path / "cpt.yaml"
    smoke = (Path(__file__).parents[1] / "recipes" / "smoke.yaml").read_text()
    recipe.write_text(
        smoke.replace(
            "model:\n", "model:\n  cpt:\n    enabled: true\n    max_steps: 8\n    learning_rate: 3.0e-3\n", 1
        )
    )
    resources = make_resources(fa_home, profile=str(recipe))
    landing = fa_home / "landing"
    demo_seed.seed_demo_landing(landing, load_profile(str(recipe)).corpus)
    assets = ingest_landing(instance, resources, landing)
    dg.materialize(
        assets,
        instance=instance,
        resources=resources,
        selection=["dedup_corpus", "eval_sets", "base_checkpoint"],
    )
    out = resources["store"].path("base_checkpoint")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["method"] == "cpt" and summary["changed_params"] > 0
    assert sum(summary["losses"][-3:]) < sum(summary["losses"][:3])
    assert (out / "merged" / "config.json").exists() and (out.with_name("resolved") / "config.json").exists()

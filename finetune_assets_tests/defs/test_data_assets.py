"""The data assets with everything switched on: planted PII, seed files, a teacher and a judge served on
127.0.0.1 (a real OpenAI-compatible server), human feedback files, and the blocking corpus checks."""

import json
from pathlib import Path

import dagster as dg
import yaml

from finetune_assets.io import read_records
from finetune_assets.phases.data import demo_seed
from finetune_assets.recipe import RECIPES_DIR, load_profile
from finetune_assets_tests.defs.conftest import ingest_landing, make_resources
from finetune_assets_tests.phases.llm_server import babbling_model, served_model  # noqa: F401

EMAIL, CARD = "maria.lopez@fabrikam.org", "4111 1111 1111 1111"

SEED_LINES = [
    {
        "instruction": "What does pathlib.Path.stem return?",
        "output": "The final path component without its suffix.",
    },
    {
        "conversations": [
            {"from": "human", "value": "Name a lazy iterator in itertools."},
            {"from": "gpt", "value": "itertools.count"},
        ]
    },
    "this line is not JSON",
]
FEEDBACK_LINES = [
    {
        "prompt": "How do I read a file in Python?",
        "chosen": "Use open() in a with block.",
        "rejected": "You can't.",
    },
    {
        "prompt": "Is eval() safe on user input?",
        "completion": "No: it runs arbitrary code.",
        "label": "thumbs_up",
    },
    {"prompt": "Is eval() safe on user input?", "completion": "Yes, always.", "label": False},
    {"prompt": "missing both sides"},
]


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _recipe(home, served) -> str:
    raw = yaml.safe_load((RECIPES_DIR / "smoke.yaml").read_text())
    endpoint = {"base_url": served.base_url, "model": served.model, "max_tokens": 24, "max_retries": 1}
    raw["name"] = "smoke-data"
    raw["dedup"]["ray_min_documents"] = 1  # sign on Ray Data, as a large corpus would
    raw["instructions"].update(
        generators=["api", "module", "section", "teacher"],
        seed_files=[{"path": "seeds.jsonl"}],
        teacher={**endpoint, "temperature": 0.0},
        teacher_max_documents=3,
    )
    raw["preferences"].update(judge=endpoint, feedback_files=["feedback.jsonl"])
    path = home / "smoke-data.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_data_assets_end_to_end(fa_home, instance, served_model, babbling_model):  # noqa: F811
    resources = make_resources(fa_home, profile=_recipe(fa_home, served_model))
    landing = fa_home / "landing"
    demo_seed.seed_demo_landing(landing, load_profile("smoke").corpus)
    doc = max((landing / "drop-0001").rglob("*.rst"), key=lambda p: p.stat().st_size).read_text()
    (landing / "drop-0004-pii").mkdir()
    (landing / "drop-0004-pii" / "contacts.md").write_text(
        f"{doc[:3000]}\n\nWrite to {EMAIL} or pay with card {CARD} before Friday.\n"
    )
    _write_jsonl(fa_home / "inputs" / "seeds.jsonl", SEED_LINES)
    _write_jsonl(fa_home / "inputs" / "feedback.jsonl", FEEDBACK_LINES)

    assets = ingest_landing(instance, resources, landing)
    selection = ["dedup_corpus", "eval_sets", "base_checkpoint", "instruction_set", "preference_pairs"]
    result = dg.materialize(assets, instance=instance, resources=resources, selection=selection)
    assert result.success
    store = resources["store"]

    # Curation: the planted PII is redacted (and the blocking checks passed on the result).
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"corpus_not_empty": True, "no_exact_duplicates": True, "no_pii_left": True}
    curated = " ".join(d["text"] for d in read_records(store.path("dedup_corpus") / "documents.parquet"))
    assert (
        EMAIL not in curated and CARD not in curated and "[EMAIL]" in curated and "[CREDIT_CARD]" in curated
    )
    report = json.loads((store.path("dedup_corpus") / "removed.json").read_text())
    assert report["pii_counts"]["email"] >= 1 and report["run"]["mode"] == "full"
    assert report["run"]["signed_on"] == "ray"

    # Instructions: seeds imported, the bad line quarantined with its line number, the teacher asked.
    stats = json.loads((store.path("instruction_set") / "stats.json").read_text())
    assert stats["generated"]["seed:seeds.jsonl"] == 2 and stats["quarantined"] == 1
    quarantine = [
        json.loads(x) for x in (store.path("instruction_set") / "quarantine.jsonl").read_text().splitlines()
    ]
    assert [(q["line"], q["raw"]) for q in quarantine] == [(3, "this line is not JSON")]
    assert stats["teacher"]["documents"] == 3 and stats["teacher"]["requests"] == 3
    assert stats["lengths"]["total_tokens"]["count"] == stats["train"] + stats["validation"]
    assert (store.path("instruction_set") / "lengths.png").stat().st_size > 1000
    rows = read_records(store.path("instruction_set") / "instructions.parquet")
    assert any(r["generator"].startswith("seed:") for r in rows)

    # Preferences: the judge was consulted, human feedback merged, thumbs kept for KTO, bad line quarantined.
    prefs = json.loads((store.path("preference_pairs") / "stats.json").read_text())
    assert prefs["judge"]["judged"] + prefs["judge"]["unjudged"] == prefs["judge"]["pairs"] > 0
    assert prefs["human_pairwise"] == 1 and prefs["binary_feedback"] == 2 and prefs["quarantined"] == 1
    binary = read_records(store.path("preference_pairs") / "binary_feedback.parquet")
    assert sorted(r["label"] for r in binary) == [False, True]
    pairs = read_records(store.path("preference_pairs") / "pairs.parquet")
    assert {"human", "reference"} <= {p["chosen_source"] for p in pairs}
    # Fairness pairs (smoke: 4): the fair answer chosen over the template's stereotyped verdict.
    assert prefs["safety"]["fairness"] == 4
    assert sum(p["rejected_source"] == "stereotyped_answer" for p in pairs) == 4

    # A late drop is curated against the saved index alone: an exact copy of a kept document is caught.
    late = landing / "drop-0009-late"
    late.mkdir()
    (late / "copy.md").write_text(
        f"{doc[:3000]}\n\nWrite to {EMAIL} or pay with card {CARD} before Friday.\n"
    )
    ingest_landing(instance, resources, landing, ["drop-0009-late"])
    again = dg.materialize(assets, instance=instance, resources=resources, selection=["dedup_corpus"])
    assert again.success
    report = json.loads((store.path("dedup_corpus") / "removed.json").read_text())
    assert report["run"]["mode"] == "incremental" and report["run"]["drops_curated"] == ["drop-0009-late"]
    late_removed = {
        Path(r["source"]).name: r["reason"] for r in report["removed"] if r["drop"] == "drop-0009-late"
    }
    # (every drop carries the same canary page: redacted, the late drop's copy is an exact duplicate too)
    assert late_removed == {"copy.md": "exact", "contacts.txt": "exact"}

    # Live feedback: a thumbs-down (with the answer the user wanted) and a bare thumbs-down, given through the
    # served API, reach preference_pairs through online_feedback and are what the next DPO / KTO trains on.
    feedback_round_trip(instance, resources, assets, babbling_model)


def feedback_round_trip(instance, resources, assets, served_folder):
    import datetime

    from finetune_assets.defs.common import model_dir
    from finetune_assets.phases.serving import serve
    from finetune_assets.phases.training import stages
    from finetune_assets_tests.phases.llm_server import request_json

    store = resources["store"]
    model = model_dir(store, "base_checkpoint")
    server = serve.make_server(served_folder, port=0, model_name="champion",
                               request_log=resources["request_log"].url).start()  # fmt: skip
    try:
        ask = {
            "messages": [{"role": "user", "content": "How do I sort a dict by its values?"}],
            "max_tokens": 8,
        }
        first = request_json(server.url + "/chat/completions", {**ask, "user": "ana"})[1]
        wanted = "Use sorted(d.items(), key=lambda kv: kv[1]) and build a dict from the result."
        ack = request_json(server.url + "/feedback", {"response_id": first["id"], "rating": "down",
                                                      "preferred": wanted})  # fmt: skip
        assert ack[0] == 200, ack
        other = {"messages": [{"role": "user", "content": "What does zip() do with lists?"}], "max_tokens": 8}
        second = request_json(server.url + "/chat/completions", {**other, "user": "bo"})[1]
        assert request_json(server.url + "/feedback", {"response_id": second["id"], "rating": -1})[0] == 200
    finally:
        server.stop()
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    result = dg.materialize(assets, instance=instance, resources=resources, partition_key=today,
                            selection=["online_feedback"])  # fmt: skip
    assert result.success
    day = json.loads((store.path("online_feedback", today) / "stats.json").read_text())
    assert (day["pairwise"], day["binary"], day["quarantined"]) == (1, 2, 0)
    assert dg.materialize(
        assets, instance=instance, resources=resources, selection=["preference_pairs"]
    ).success
    prefs = json.loads((store.path("preference_pairs") / "stats.json").read_text())
    assert prefs["feedback_sources"]["online"]["days"] == 1
    dpo = stages.dpo_stage(store.path("preference_pairs"), start_dir=model, cfg=load_profile("smoke").dpo)
    [pair] = [r for r in dpo.data["rows"] if r["chosen_source"] == "user_preferred"]
    assert pair["chosen"] == wanted and pair["rejected"] == first["choices"][0]["message"]["content"]
    kto_cfg = load_profile("smoke").dpo.model_copy(update={"preference_method": "kto"})
    kto = stages.dpo_stage(store.path("preference_pairs"), start_dir=model, cfg=kto_cfg).data["rows"]
    downs = {r["completion"] for r in kto if r["label"] is False}
    assert second["choices"][0]["message"]["content"] in downs  # the bare thumbs-down, as a KTO row

"""phases.data.preference_set: the asset's work without Dagster: the base model answers (rejected), the
references are chosen, human feedback is merged, and the files land in the output folder."""

import json

from finetune_assets.config import PreferencesConfig
from finetune_assets.io import read_records
from finetune_assets.phases.data import preference_set
from finetune_assets_tests.phases.data.test_preferences import INSTRUCTIONS


def test_build_pairs_with_the_base_models_answers_and_human_feedback(tmp_path, tiny_model_dir):
    feedback = tmp_path / "feedback.jsonl"
    rows = [
        {"prompt": "Which shelf opens fastest?", "chosen": "The open one.", "rejected": "All of them."},
        {"prompt": "Is a list mutable?", "completion": "Yes, lists are mutable.", "label": True},
    ]
    feedback.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    out = tmp_path / "out"
    built = preference_set.build(
        PreferencesConfig(max_pairs=3, max_new_tokens=8, batch_size=2),
        INSTRUCTIONS,
        tmp_path / "no-eval-sets",  # nothing held out to decontaminate against
        out,
        base_dir=tiny_model_dir,
        decontam_ngram=8,
        feedback_files=[feedback],
    )
    pairs = read_records(built.pairs_path)
    assert [p["rejected_source"] for p in pairs].count("base_checkpoint") == built.stats["pairs"] - 1
    assert sum(p["chosen_source"] == "human" for p in pairs) == 1
    assert len(read_records(out / preference_set.BINARY_FILE)) == 1
    assert [(q["line"], "invalid JSON" in q["reason"]) for q in built.quarantine] == [(3, True)]
    assert json.loads((out / "stats.json").read_text())["pairs"] == built.stats["pairs"]

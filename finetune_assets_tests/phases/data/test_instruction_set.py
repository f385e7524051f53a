"""phases.data.instruction_set: the asset's work without Dagster: seed files with a bad line, the extractors,
and the files and statistics it leaves."""

import json

from finetune_assets.config import InstructionsConfig
from finetune_assets.io import read_jsonl, read_records
from finetune_assets.phases.data import instruction_set
from finetune_assets_tests.phases.data.test_instructions import _base_docs, _eval_dir


def test_build_imports_seeds_runs_extractors_and_writes_its_files(tmp_path, tiny_model_dir):
    docs = _base_docs()
    eval_dir = _eval_dir(tmp_path, docs)
    seed_file = tmp_path / "seeds.jsonl"
    good = {"instruction": "Name a shelf method that stores items.", "output": "shelve() stores an item."}
    seed_file.write_text(json.dumps(good) + "\n{broken\n", encoding="utf-8")
    out = tmp_path / "out"
    built = instruction_set.build(
        InstructionsConfig(),
        docs,
        eval_dir,
        out,
        tokenizer_dir=tiny_model_dir,
        max_length=64,
        seed_files=[(seed_file, "auto")],
    )
    records = read_records(built.records_path)
    assert built.records_path == out / instruction_set.RECORDS_FILE and records
    assert sum(r["source"] == "seed:seeds.jsonl" for r in records) == 1
    assert [(q["line"], "invalid JSON" in q["reason"]) for q in built.quarantine] == [(2, True)]
    assert read_jsonl(out / "quarantine.jsonl") == built.quarantine
    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(built.stats))
    assert built.stats["lengths"]["total_tokens"]["count"] == len(records) and built.histogram_path.is_file()

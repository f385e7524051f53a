"""phases.evaluation.review_import: expert labels imported back, bad rows reported by line."""

import json
import shutil

import pytest

from finetune_assets.phases.evaluation.review import (
    export_review,
)
from finetune_assets.phases.evaluation.review_import import import_review, parse_label
from finetune_assets_tests.phases.evaluation.test_review import VARIANTS, read_csv, write_csv


def lines_of(rows: list[dict]) -> list[int]:
    """Line where each data row of a CSV written by write_csv starts (header on line 1)."""
    starts, line = [], 2
    for row in rows:
        starts.append(line)
        line += 1 + sum(str(v).count("\n") for v in row.values())
    return starts


def test_round_trip_reports_bad_label_counts_blank_keeps_rest(tmp_path, variant_rows):
    rows = read_csv(export_review(variant_rows, tmp_path / "out", per_variant=4, seed=7)["paths"]["csv"])
    values = ["Yes", "0", "TRUE", "wrong", "y", "n", "correct", "Incorrect", "1", "false"]
    for i, row in enumerate(rows):
        row["human_correct"] = values[i % len(values)]
        row["reviewer"] = "ann"
    bad, blank = 5, 9
    rows[bad]["human_correct"] = "maybe"
    rows[blank]["human_correct"] = "  "
    filled = tmp_path / "filled.csv"
    write_csv(filled, rows)
    assert any("\n" in r["answer"] for r in rows[:bad])  # a multi-line answer before the bad row

    result = import_review([filled])

    assert len(result["problems"]) == 1
    problem = result["problems"][0]
    assert problem["file"] == str(filled) and problem["line"] == lines_of(rows)[bad]
    assert problem["fields"] == ["human_correct"] and "human_correct" in problem["reason"]
    assert "'maybe'" in problem["reason"] and problem["review_id"] == rows[bad]["review_id"]
    assert result["unlabelled"] == 1
    assert len(result["labels"]) == len(rows) - 2 and result["n_rows"] == len(rows)
    by_id = {label["review_id"]: label for label in result["labels"]}
    assert rows[bad]["review_id"] not in by_id and rows[blank]["review_id"] not in by_id
    for i, row in enumerate(rows):
        if i in (bad, blank):
            continue
        label = by_id[row["review_id"]]
        assert label["human_correct"] is parse_label(values[i % len(values)])
        assert label["auto_correct"] is (row["auto_correct"] == "1")
        assert (label["variant"], label["kind"], label["item_id"], label["reviewer"]) == (
            row["variant"],
            row["kind"],
            row["item_id"],
            "ann",
        )


def test_blind_round_trip_needs_the_key(tmp_path, variant_rows):
    out = tmp_path / "out"
    rows = read_csv(export_review(variant_rows, out, per_variant=3, seed=2, blind=True)["paths"]["csv"])
    for row in rows:
        row["human_correct"] = "yes"
    write_csv(out / "filled.csv", rows)  # beside review_key.json: found on its own
    elsewhere = tmp_path / "inbox"
    elsewhere.mkdir()
    shutil.copy(out / "filled.csv", elsewhere / "filled.csv")

    beside = import_review([out / "filled.csv"])
    explicit = import_review([elsewhere / "filled.csv"], key_path=out / "review_key.json")
    key = json.loads((out / "review_key.json").read_text())
    for result in (beside, explicit):
        assert result["problems"] == [] and len(result["labels"]) == len(rows)
        assert {label["variant"] for label in result["labels"]} == set(VARIANTS)
        for label in result["labels"]:
            assert label["auto_correct"] is bool(key["rows"][label["review_id"]]["auto_correct"])

    keyless = import_review([elsewhere / "filled.csv"])
    assert keyless["labels"] == [] and len(keyless["problems"]) == len(rows)
    assert all("variant" in p["fields"] and "review key" in p["reason"] for p in keyless["problems"])


def test_header_without_required_column_and_unknown_suffix(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("review_id,variant,kind,item_id\nabc,base,qa,q1\n")
    result = import_review([bad])
    assert result["labels"] == [] and result["problems"][0]["line"] == 1
    assert "human_correct" in result["problems"][0]["reason"]
    with pytest.raises(ValueError, match="csv or .jsonl"):
        import_review([tmp_path / "labels.xlsx"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("Yes", True), ("Y", True), ("TRUE", True), ("Correct", True), (1, True), (True, True)]
    + [("0", False), ("no", False), ("N", False), ("false", False), ("incorrect", False), ("WRONG", False)]
    + [(0, False), ("", None), ("  ", None), (None, None)],
)
def test_parse_label(value, expected):
    assert parse_label(value) is expected


@pytest.mark.parametrize("value", ["maybe", "2", "yes!", 0.5])
def test_parse_label_rejects(value):
    with pytest.raises(ValueError, match="not a label"):
        parse_label(value)


def test_only_labels_of_the_current_answers_count(tmp_path):
    from pathlib import Path

    from finetune_assets import io
    from finetune_assets.phases.evaluation.review_import import current_labels

    rows = {
        "inst": {
            "glossary": [
                {"id": "g1", "term": "t", "reference": "r", "generated": "=old answer", "correct": True}
            ],
            "qa": [],
        }
    }
    sample = export_review(rows, tmp_path / "a", per_variant=1, seed=0)
    filled = io.read_jsonl(Path(sample["paths"]["jsonl"]))
    filled[0]["human_correct"] = 1
    io.write_jsonl(filled, tmp_path / "filled.jsonl")
    labels = import_review([tmp_path / "filled.jsonl"])["labels"]
    assert current_labels(labels, filled) == labels  # the same answer: the label counts

    rows["inst"]["glossary"][0]["generated"] = "a retrained model's new answer"
    newer = export_review(rows, tmp_path / "b", per_variant=1, seed=0)
    assert current_labels(labels, io.read_jsonl(Path(newer["paths"]["jsonl"]))) == []

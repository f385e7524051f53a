"""phases.evaluation.review: export a review sample, and human vs auto-judge agreement."""

import csv
import json
import random

import pytest

from finetune_assets.phases.evaluation import review
from finetune_assets.phases.evaluation.review import (
    REVIEW_COLUMNS,
    agreement,
    export_review,
    load_labels,
    review_id,
    save_labels,
)
from finetune_assets.phases.evaluation.review_import import import_review

VARIANTS = ("base", "inst", "dpo")


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def glossary_rows(variant: str, n: int = 6) -> list[dict]:
    """definitions.jsonl rows: term g<i>; the auto verdict alternates so both values occur."""
    return [
        {
            "id": f"g{i}",
            "term": f"term{i}",
            "reference": f"reference of term{i}",
            "generated": f"{variant} defines term{i}" + ("\nsecond line" if i == 1 else ""),
            "rouge_l": 0.5,
            "similarity": None,
            "correct": (i + len(variant)) % 2 == 0,
        }
        for i in range(n)
    ]


def qa_rows(variant: str, n: int = 3) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "question": f"question {i}?",
            "reference": f"answer {i}",
            "generated": f"-{variant} answers {i}",  # leading '-': a spreadsheet would read a formula
            "rouge_l": 0.4,
            "correct": i % 2 == 1,
        }
        for i in range(n)
    ]


def read_csv(path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def items_by_variant(rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        out.setdefault(row["variant"], []).append((row["kind"], row["item_id"]))
    return {v: sorted(items) for v, items in out.items()}


def test_export_same_items_for_every_variant_and_columns(tmp_path, variant_rows):
    result = export_review(variant_rows, tmp_path, per_variant=4, seed=7)
    rows = read_csv(result["paths"]["csv"])

    assert list(rows[0]) == REVIEW_COLUMNS
    assert result["n"] == len(rows) == 4 * len(VARIANTS)
    by_variant = items_by_variant(rows)
    assert set(by_variant) == set(VARIANTS)
    assert by_variant["base"] == by_variant["inst"] == by_variant["dpo"]
    assert len(by_variant["base"]) == 4 == result["n_items"]
    # 5 shared glossary items, 3 qa: 4 * 5/8 = 2.5 and 1.5 -> largest remainder, tie to glossary: 3 + 1
    assert result["per_kind"] == {"glossary": 3, "qa": 1}
    assert {k for k, _ in by_variant["base"]} == {"glossary", "qa"}
    assert ("glossary", "g5") not in by_variant["base"] and result["not_shared"] == 1

    source = {(v, k, r["id"]): r for v in VARIANTS for k in ("glossary", "qa") for r in variant_rows[v][k]}
    for row in rows:
        src = source[(row["variant"], row["kind"], row["item_id"])]
        assert row["review_id"] == review_id(row["variant"], row["kind"], row["item_id"])
        assert row["auto_correct"] == ("1" if src["correct"] else "0")
        assert row["prompt"] == src["term" if row["kind"] == "glossary" else "question"]
        assert row["human_correct"] == row["reviewer"] == row["notes"] == ""
        if row["kind"] == "qa":
            assert row["answer"] == "'" + src["generated"]  # formula-safe in the CSV ...
    jsonl = [json.loads(line) for line in open(result["paths"]["jsonl"], encoding="utf-8")]
    assert [r["review_id"] for r in jsonl] == [r["review_id"] for r in rows]
    qa_json = next(r for r in jsonl if r["kind"] == "qa")
    assert qa_json["answer"].startswith("-")  # ... exact text in the JSONL
    assert not (tmp_path / "review_key.json").exists()


def test_export_is_stable_and_seeded(tmp_path, variant_rows):
    first = read_csv(export_review(variant_rows, tmp_path / "a", per_variant=4, seed=7)["paths"]["csv"])
    shuffled = {
        v: {k: random.Random(1).sample(rows, len(rows)) for k, rows in kinds.items()}
        for v, kinds in variant_rows.items()
    }
    again = read_csv(export_review(shuffled, tmp_path / "b", per_variant=4, seed=7)["paths"]["csv"])
    assert items_by_variant(first) == items_by_variant(again)  # row order of the inputs does not matter
    picks = {
        tuple(
            items_by_variant(
                read_csv(
                    export_review(variant_rows, tmp_path / f"s{s}", per_variant=4, seed=s)["paths"]["csv"]
                )
            )["base"]
        )
        for s in range(6)
    }
    assert len(picks) > 1  # the seed changes the sample


def test_export_caps_at_shared_items(tmp_path, variant_rows):
    result = export_review(variant_rows, tmp_path, per_variant=100, seed=0)
    assert result["n_items"] == 8 and result["per_kind"] == {"glossary": 5, "qa": 3}
    assert result["n"] == 8 * len(VARIANTS)
    assert export_review(variant_rows, tmp_path / "none", per_variant=0, seed=0)["n"] == 0


def test_blind_export_hides_variants_and_key_maps_back(tmp_path, variant_rows):
    plain = read_csv(export_review(variant_rows, tmp_path / "plain", per_variant=4, seed=3)["paths"]["csv"])
    result = export_review(variant_rows, tmp_path / "blind", per_variant=4, seed=3, blind=True)
    rows = read_csv(result["paths"]["csv"])
    key = json.loads((tmp_path / "blind" / "review_key.json").read_text())
    assert result["paths"]["key"] == str(tmp_path / "blind" / "review_key.json")

    assert {r["variant"] for r in rows} == set(key["codes"]) and len(key["codes"]) == len(VARIANTS)
    assert all(r["variant"].startswith("blind-") for r in rows)
    assert not {r["variant"] for r in rows} & set(VARIANTS)
    assert sorted(key["codes"].values()) == sorted(VARIANTS)
    assert all(r["auto_correct"] == "" for r in rows)  # the auto verdict would anchor the expert
    plain_by_id = {r["review_id"]: r for r in plain}
    assert set(plain_by_id) == {r["review_id"] for r in rows}  # the same rows, ...
    assert [r["review_id"] for r in rows] != [r["review_id"] for r in plain]  # ... shuffled
    for row in rows:
        real = key["codes"][row["variant"]]
        assert key["rows"][row["review_id"]]["variant"] == real == plain_by_id[row["review_id"]]["variant"]
        assert (
            str(key["rows"][row["review_id"]]["auto_correct"])
            == plain_by_id[row["review_id"]]["auto_correct"]
        )

    export_review(variant_rows, tmp_path / "blind", per_variant=4, seed=3)  # a plain re-export drops the key
    assert not (tmp_path / "blind" / "review_key.json").exists()


def test_round_trip_semicolon_csv_from_a_spreadsheet(tmp_path, variant_rows):
    rows = read_csv(export_review(variant_rows, tmp_path / "out", per_variant=2, seed=1)["paths"]["csv"])
    for row in rows:
        row["human_correct"] = "1"
    filled = tmp_path / "filled.csv"
    with open(filled, "w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(reversed(REVIEW_COLUMNS)), delimiter=";")
        writer.writeheader()
        writer.writerows(rows)
    result = import_review([filled])
    assert result["problems"] == [] and len(result["labels"]) == len(rows)


def test_jsonl_import_reports_missing_field_and_bad_json(tmp_path, variant_rows):
    out = tmp_path / "out"
    export_review(variant_rows, out, per_variant=2, seed=4)
    rows = [json.loads(line) for line in open(out / "review_sample.jsonl", encoding="utf-8")]
    for row in rows:
        row["human_correct"] = True
    del rows[1]["kind"]
    rows[2]["item_id"] = "g999"  # edited: no longer the row its review_id names
    filled = tmp_path / "filled.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")
    filled.write_text("\n".join(lines) + "\n")

    result = import_review([filled])

    problems = {p["line"]: p for p in result["problems"]}
    assert set(problems) == {2, 3, 4}
    assert problems[2]["fields"] == ["kind"] and "kind is missing" in problems[2]["reason"]
    assert problems[3]["fields"] == ["review_id"] and "item_id" in problems[3]["reason"]
    assert problems[4]["fields"] == [] and "invalid JSON" in problems[4]["reason"]
    assert len(result["labels"]) == len(rows) - 2


def test_duplicates_across_files_last_wins_and_reported(tmp_path, variant_rows):
    rows = read_csv(export_review(variant_rows, tmp_path / "out", per_variant=2, seed=5)["paths"]["csv"])
    first = [dict(r, human_correct="1", reviewer="ann") for r in rows]
    second = [dict(rows[0], human_correct="0", reviewer="bob"), dict(rows[1], human_correct="")]
    write_csv(tmp_path / "ann.csv", first)
    write_csv(tmp_path / "bob.csv", second)

    result = import_review([tmp_path / "ann.csv", tmp_path / "bob.csv"])

    assert len(result["labels"]) == len(rows) and result["problems"] == []
    assert result["unlabelled"] == 0  # bob's blank row was labelled by ann
    by_id = {label["review_id"]: label for label in result["labels"]}
    assert (
        by_id[rows[0]["review_id"]]["human_correct"] is False
        and by_id[rows[0]["review_id"]]["reviewer"] == "bob"
    )
    assert by_id[rows[1]["review_id"]]["human_correct"] is True
    assert result["duplicates"] == [
        {
            "review_id": rows[0]["review_id"],
            "kept": {"file": str(tmp_path / "bob.csv"), "line": 2},
            "replaced": {"file": str(tmp_path / "ann.csv"), "line": 2},
            "same_label": False,
        }
    ]


def label(variant: str, kind: str, i: int, human: int, auto: int, reviewer: str = "ann") -> dict:
    item = f"{kind[0]}{i}"
    return {
        "review_id": review_id(variant, kind, item),
        "variant": variant,
        "kind": kind,
        "item_id": item,
        "human_correct": bool(human),
        "auto_correct": bool(auto),
        "reviewer": reviewer,
        "notes": "",
    }


def test_agreement_hand_computed():
    # base/glossary: human 1,1,0,0 vs auto 1,1,1,0 -> agree 3/4; p_h = .5, p_a = .75,
    #   p_e = .5*.75 + .5*.25 = .5 -> kappa = (.75 - .5) / (1 - .5) = .5
    # inst/qa: human 1,0 vs auto 0,1 -> agree 0; p_e = .5 -> kappa = (0 - .5) / .5 = -1
    # overall (6): both correct 2, human only 1, auto only 2, both wrong 1 -> agree .5, p_h = .5,
    #   p_a = 4/6, p_e = .5*4/6 + .5*2/6 = .5 -> kappa 0
    labels = [label("base", "glossary", i, h, a) for i, (h, a) in enumerate([(1, 1), (1, 1), (0, 1), (0, 0)])]
    labels += [label("inst", "qa", i, h, a, "bob") for i, (h, a) in enumerate([(1, 0), (0, 1)])]

    result = agreement(labels)

    base = result["variants"]["base"]["glossary"]
    assert base["n_labelled"] == 4
    assert base["human_rate"] == 0.5 and base["auto_rate"] == 0.75
    assert base["agreement"] == 0.75 and base["cohen_kappa"] == pytest.approx(0.5)
    assert base["confusion"] == {"both_correct": 2, "human_only": 0, "auto_only": 1, "both_wrong": 1}
    inst = result["variants"]["inst"]["qa"]
    assert (inst["human_rate"], inst["auto_rate"], inst["agreement"]) == (0.5, 0.5, 0.0)
    assert inst["cohen_kappa"] == pytest.approx(-1.0)
    empty = result["variants"]["base"]["qa"]
    assert empty["n_labelled"] == 0 and empty["human_rate"] is None and empty["cohen_kappa"] is None
    overall = result["overall"]
    assert overall["n_labelled"] == 6 and overall["agreement"] == 0.5
    assert overall["human_rate"] == 0.5 and overall["auto_rate"] == pytest.approx(4 / 6)
    assert overall["cohen_kappa"] == pytest.approx(0.0)
    assert result["per_kind"]["glossary"]["agreement"] == 0.75 and result["per_kind"]["qa"]["n_labelled"] == 2
    assert result["reviewers"] == ["ann", "bob"]


def test_kappa_degenerate_cases():
    same = agreement([label("base", "qa", i, 1, 1) for i in range(3)])["overall"]
    assert same["agreement"] == 1.0 and same["cohen_kappa"] is None  # both constant and equal: undefined
    opposite = agreement([label("base", "qa", i, 1, 0) for i in range(3)])["overall"]
    assert opposite["agreement"] == 0.0 and opposite["cohen_kappa"] == 0.0  # chance agreement 0: defined
    one_constant = agreement([label("base", "qa", i, h, 1) for i, h in enumerate([1, 0, 1])])["overall"]
    assert one_constant["cohen_kappa"] == pytest.approx(0.0)
    nothing = agreement([])
    assert nothing["variants"] == {} and nothing["overall"]["cohen_kappa"] is None
    assert nothing["overall"]["agreement"] is None


def test_save_and_load_labels_merge(tmp_path):
    assert load_labels(tmp_path) == []
    batch1 = {"labels": [label("base", "qa", 0, 1, 1), label("base", "qa", 1, 0, 1)]}
    saved = save_labels(batch1, tmp_path)
    assert saved == {"path": str(tmp_path / review.LABELS_FILE), "n": 2, "added": 2, "replaced": 0}
    assert load_labels(tmp_path) == batch1["labels"]

    batch2 = [label("base", "qa", 1, 1, 1, "bob"), label("inst", "qa", 0, 1, 0)]
    assert save_labels(batch2, tmp_path)["n"] == 3
    stored = {r["review_id"]: r for r in load_labels(tmp_path)}
    assert stored[batch2[0]["review_id"]]["reviewer"] == "bob" and len(stored) == 3
    assert [p.name for p in tmp_path.iterdir()] == [review.LABELS_FILE]  # no temporary files left

    assert save_labels(batch2, tmp_path, merge=False)["n"] == 2
    assert load_labels(tmp_path) == batch2

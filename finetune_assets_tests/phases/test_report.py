"""phases.report: report.md, metrics.csv and comparison.png from evaluate_variant-shaped results."""

import csv

import pytest

from finetune_assets import io
from finetune_assets.phases.report import KEY_METRICS, write_report

CALIBRATION = {
    "n_terms": 4,
    "rouge_threshold": 0.25,
    "embed_threshold": 0.7,
    "embedder": True,
    "truncate_words": 10,
    "self_accept_rate": 1.0,
    "truncated_accept_rate": 0.75,
    "other_reject_rate": 1.0,
    "pairs_embed_false_accept_rate": 0.0,
}


def fake_result(tmp_path, variant: str, acc: float, ppl: float, with_qa: bool = True) -> dict:
    definitions = tmp_path / variant / "definitions.jsonl"
    io.write_jsonl(
        [
            {
                "term": "list",
                "reference": "A mutable sequence.",
                "generated": f"{variant} says | a list is mutable",
                "rouge_l": 0.5,
                "similarity": 0.8,
                "correct": True,
            }
        ],
        definitions,
    )
    metrics = {
        "fa_domain_mc/acc": acc,
        "fa_domain_mc/acc_norm": acc,
        "hallucination/index": acc / 2,
        "perplexity/token": ppl,
        "fa_heldout_ppl/word_perplexity": ppl * 3,
        "generation/tokens_per_s": 12.5,
        "time/total_s": 3.0,
    }
    if with_qa:
        metrics["fa_domain_qa/rougeL"] = 0.2
    return {
        "variant": variant,
        "model_dir": f"/models/{variant}",
        "adapter_dir": None,
        "metrics": metrics,
        "calibration": CALIBRATION,
        "counts": {"glossary": 4, "qa_mc": 4, "qa_gen": 3, "heldout_text": 3},
        "files": {"definitions": str(definitions)},
    }


def test_write_report_one_row_per_variant(tmp_path):
    results = [
        fake_result(tmp_path, "tr", 0.75, 20.0),
        fake_result(tmp_path, "base", 0.25, 40.0, with_qa=False),
        fake_result(tmp_path, "dpo", 0.5, 25.0),
        fake_result(tmp_path, "inst", 0.5, 30.0),
    ]
    out = write_report(results, tmp_path / "report", title="Tiny comparison", extra={"profile": "smoke"})

    assert [row["variant"] for row in out["table"]] == ["base", "inst", "dpo", "tr"]
    assert out["table"][0]["fa_domain_qa/rougeL"] is None
    assert set(out["table"][0]) == {"variant", *(key for key, _, _ in KEY_METRICS)}

    md = (tmp_path / "report" / "report.md").read_text()
    assert md == out["markdown"] and md.startswith("# Tiny comparison")
    comparison = md.split("## Comparison")[1].split("## Judge calibration")[0]
    table_rows = [line for line in comparison.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in table_rows] == ["base", "inst", "dpo", "tr"]
    assert "**0.750**" in table_rows[3] and "**20.000**" in table_rows[3]  # best acc and lowest perplexity
    assert "**" not in table_rows[3].split("|")[-2]  # tokens/s is the same everywhere: no winner
    assert "| - |" in table_rows[0]  # base has no QA score
    assert "reference judged correct against itself | 1.000" in md
    assert "profile" in md and "a list is mutable" in md and "\\|" in md  # pipes inside cells are escaped

    with open(out["paths"]["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [row["variant"] for row in rows] == ["base", "inst", "dpo", "tr"]
    assert rows[0]["fa_domain_qa/rougeL"] == "" and float(rows[3]["fa_domain_mc/acc"]) == 0.75
    assert "time/total_s" in rows[0]

    png = (tmp_path / "report" / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert out["paths"]["plot"].endswith("comparison.png")
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_report_rejects_empty_and_duplicates(tmp_path):
    with pytest.raises(ValueError):
        write_report([], tmp_path, title="x")
    dup = [fake_result(tmp_path, "base", 0.1, 2.0), fake_result(tmp_path, "base", 0.2, 3.0)]
    with pytest.raises(ValueError):
        write_report(dup, tmp_path, title="x")

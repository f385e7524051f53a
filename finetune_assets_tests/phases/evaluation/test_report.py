"""phases.evaluation.report: report.md/.html, metrics.csv, comparison.png and loss_curves.png from
evaluate_variant-shaped results, with the promotion decision, guardrails, warnings and human-review sections."""

import base64
import csv
import html
import json
import re

import pytest

from finetune_assets import io
from finetune_assets.phases.evaluation.report import write_report

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
        "fa_heldout_ppl/word_perplexity": ppl,
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
        "intervals": {"fa_domain_mc/acc": {"value": acc, "low": acc - 0.1, "high": acc + 0.1, "n": 60}},
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
    # Key metrics no variant has (tool use, guardrail rates, latency, judge model) are dropped, not all "-".
    assert set(out["table"][0]) == {
        "variant",
        "fa_domain_mc/acc",
        "fa_domain_qa/rougeL",
        "hallucination/index",
        "fa_heldout_ppl/word_perplexity",
        "generation/tokens_per_s",
    }

    md = (tmp_path / "report" / "report.md").read_text()
    assert md == out["markdown"] and md.startswith("# Tiny comparison")
    assert "Tool-use" not in md and "Latency" not in md and "judge model" not in md
    comparison = md.split("## Comparison")[1].split("## Guardrails")[0]
    table_rows = [line for line in comparison.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in table_rows] == ["base", "inst", "dpo", "tr"]
    assert "| 0.750 [0.650, 0.850] |" in table_rows[3] and "| 20.000 |" in table_rows[3]  # value [interval]
    assert "**" not in comparison  # no "best" in bold: a point difference may be noise
    assert "## Differences to the base" not in md  # no paired comparison given
    assert "| - |" in table_rows[0]  # base has no QA score
    assert "reference judged correct against itself | 1.000" in md
    assert "profile" in md and "a list is mutable" in md and "\\|" in md  # pipes inside cells are escaped

    with open(out["paths"]["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [row["variant"] for row in rows] == ["base", "inst", "dpo", "tr"]
    assert rows[0]["fa_domain_qa/rougeL"] == "" and float(rows[3]["fa_domain_mc/acc"]) == 0.75
    assert "time/total_s" in rows[0] and "tool_use/accuracy" not in rows[0]

    png = (tmp_path / "report" / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert out["paths"]["plot"].endswith("comparison.png")
    assert "loss_plot" not in out["paths"] and not (tmp_path / "report" / "loss_curves.png").exists()
    assert "No guardrail was evaluated." in md and "No warnings." in md and "## Promotion" not in md
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]  # no temp files left


def test_write_report_rejects_empty_and_duplicates(tmp_path):
    with pytest.raises(ValueError):
        write_report([], tmp_path, title="x")
    dup = [fake_result(tmp_path, "base", 0.1, 2.0), fake_result(tmp_path, "base", 0.2, 3.0)]
    with pytest.raises(ValueError):
        write_report(dup, tmp_path, title="x")


def guarded(result: dict, leakage: float, refusal: float, warnings: list[str] | None = None) -> dict:
    """Add guardrail results (leakage fails above 0.05, refusal fails below 0.8) and warnings."""
    result["guardrails"] = {
        "leakage": {"value": leakage, "threshold": 0.05, "op": "<=", "passed": leakage <= 0.05},
        "refusal": {"value": refusal, "threshold": 0.8, "op": ">=", "passed": refusal >= 0.8},
    }
    result["metrics"]["guardrails/leakage_rate"] = leakage
    result["metrics"]["guardrails/refusal_rate"] = refusal
    result["warnings"] = warnings or []
    return result


PROMOTED = {
    "primary_metric": "hallucination/index",
    "higher_is_better": True,
    "candidate": "dpo",
    "promoted": True,
    "champion_before": {"version": "3", "variant": "inst", "value": 0.2},
    "version": "7",
    "reasons": ["dpo beats champion inst (v3) on hallucination/index: 0.375 vs 0.200 (+0.175 >= 0.0)"],
}


REFUSED = {
    **PROMOTED,
    "candidate": "tr",
    "promoted": False,
    "version": None,
    "reasons": ["tr fails guardrail leakage: 0.100 > 0.050"],
}


def html_rows(page: str, first_cell: str) -> list[str]:
    return [
        row for row in re.findall(r"<tr>.*?</tr>", page, re.S) if row.startswith(f"<tr><td>{first_cell}<")
    ]


def test_report_with_promotion_guardrails_curves_review_and_html(tmp_path):
    results = [
        guarded(fake_result(tmp_path, "base", 0.25, 40.0), 0.0, 0.9),
        guarded(fake_result(tmp_path, "dpo", 0.75, 25.0), 0.02, 0.85),
        guarded(
            fake_result(tmp_path, "tr", 0.5, 20.0),
            0.1,
            0.5,
            warnings=["forgetting: general-text perplexity rose 25% over base (margin 10%)"],
        ),
    ]
    curves = {
        "base": {"train/loss": [(1, 3.0), (2, 2.5)]},
        "dpo": {"train/loss": [[1, 2.0], [2, 1.5], [3, 1.2]], "train/rewards/margins": [(1, 0.1), (2, 0.4)]},
    }
    review = {
        "source": "/reviews/labels.csv",
        "variants": {
            "tr": {"n_labelled": 12, "human_index": 0.5, "auto_index": 0.58, "cohen_kappa": 0.61},
            "dpo": {"n_labelled": 10, "human_index": 0.7, "auto_index": 0.75, "agreement": 0.9, "note": "x"},
        },
    }
    out = write_report(
        results, tmp_path / "r", title="Gated", promotion=PROMOTED, loss_curves=curves, review=review
    )
    md = out["markdown"]

    # Promotion comes first, right after the title, and names the new champion and the reason.
    assert md.index("## Promotion") < md.index("## Comparison")
    assert md.split("\n")[2] == "## Promotion"
    promotion = md.split("## Promotion")[1].split("## ")[0]
    assert "Approved for promotion: `dpo` becomes the `champion`" in promotion and "version 7" in promotion
    assert PROMOTED["reasons"][0] in promotion and "inst" in promotion

    # Guardrails: a cell per variant x guardrail with value, threshold and verdict; an overall verdict.
    guard = md.split("## Guardrails")[1].split("## ")[0]
    rows = {line.split("|")[1].strip(): line for line in guard.splitlines() if line.startswith("| ")}
    assert "0.100 (<= 0.050) FAIL" in rows["tr"] and "0.500 (>= 0.800) FAIL" in rows["tr"]
    assert "0.020 (<= 0.050) PASS" in rows["dpo"] and rows["dpo"].rstrip(" |").endswith("PASS")
    assert rows["tr"].rstrip(" |").endswith("FAIL")
    assert "Leakage rate" in md and "Refusal rate" in md  # the guardrail metrics join the key table
    warnings = md.split("## Warnings")[1].split("## ")[0]
    assert "**tr**: forgetting: general-text perplexity rose 25%" in warnings and "dpo" not in warnings

    # Human review: every numeric key as a column (non-numeric ones skipped), variants in report order.
    human = md.split("## Human review")[1].split("## ")[0]
    assert "/reviews/labels.csv" in human and "note" not in human
    lines = [line for line in human.splitlines() if line.startswith("| ")]
    assert lines[0] == "| Variant | n_labelled | human_index | auto_index | agreement | cohen_kappa |"
    assert lines[1].startswith("| dpo | 10 | 0.700") and lines[2].startswith("| tr | 12 |")
    assert lines[2].endswith("| - | 0.610 |")

    # Training curves: written, returned and referenced.
    loss_png = tmp_path / "r" / "loss_curves.png"
    assert out["paths"]["loss_plot"] == str(loss_png)
    assert loss_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](loss_curves.png)" in md
    # Dagster's Markdown metadata resolves no relative link: that copy carries the PNGs inline
    embedded = out["markdown_embedded"]
    assert "](loss_curves.png)" not in embedded
    inline = base64.b64encode(loss_png.read_bytes()).decode()
    assert f"](data:image/png;base64,{inline})" in embedded
    assert (
        embedded.replace(f"data:image/png;base64,{inline}", "loss_curves.png").split("![")[0]
        == md.split("![")[0]
    )

    # HTML: self-contained, same sections, every variant, PASS/FAIL cells, both plots embedded.
    page = (tmp_path / "r" / "report.html").read_text()
    assert out["paths"]["html"] == str(tmp_path / "r" / "report.html")
    assert page.startswith("<!DOCTYPE html>") and "<title>Gated</title>" in page
    for section in ("Promotion", "Comparison", "Guardrails", "Warnings", "Training curves", "Human review"):
        assert f"<h2>{section}</h2>" in page
    assert page.index("<h2>Promotion</h2>") < page.index("<h2>Comparison</h2>")
    for variant in ("base", "dpo", "tr"):
        assert html_rows(page, variant), variant
    assert '<td class="fail">0.100 (&lt;= 0.050) FAIL</td>' in page
    assert '<td class="pass">0.020 (&lt;= 0.050) PASS</td>' in page
    assert html.escape(PROMOTED["reasons"][0]) in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 and 'src="comparison.png' not in page
    assert base64.b64decode(images[0]) == (tmp_path / "r" / "comparison.png").read_bytes()
    assert base64.b64decode(images[1]) == loss_png.read_bytes()
    comparison_rows = [r for r in html_rows(page, "dpo") if "0.750" in r]
    assert "<td>0.750 [0.650, 0.850]</td>" in comparison_rows[0] and 'class="best"' not in page

    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["promotion"]["version"] == "7" and summary["warnings"]["tr"]
    assert summary["guardrails"]["tr"]["leakage"]["passed"] is False
    assert "guardrails/leakage_rate" in summary["key_metrics"]


def test_refused_promotion_says_why_not_and_stale_curves_are_removed(tmp_path):
    results = [
        fake_result(tmp_path, "base", 0.25, 40.0),
        guarded(fake_result(tmp_path, "tr", 0.5, 20.0), 0.1, 0.9),
    ]
    out_dir = tmp_path / "r"
    write_report(results, out_dir, title="T", loss_curves={"tr": {"train/loss": [(1, 2.0), (2, 1.0)]}})
    assert (out_dir / "loss_curves.png").exists()

    out = write_report(results, out_dir, title="T", promotion=REFUSED, loss_curves={"tr": {"train/loss": []}})
    promotion = out["markdown"].split("## Promotion")[1].split("## ")[0]
    assert "No promotion: candidate `tr` did not become `champion`" in promotion
    assert "the champion stays `inst` (version 3)" in promotion
    assert "Why not:" in promotion and REFUSED["reasons"][0] in promotion
    assert "Candidate `tr`: 0.250" in promotion  # its hallucination/index from the results
    assert "loss_plot" not in out["paths"] and not (out_dir / "loss_curves.png").exists()
    page = (out_dir / "report.html").read_text()
    assert '<p class="refused">' in page and html.escape(REFUSED["reasons"][0]) in page
    assert "Approved for promotion" not in page

    none_yet = {**REFUSED, "candidate": None, "champion_before": None, "reasons": ["no variant passed"]}
    md = write_report(results, out_dir, title="T", promotion=none_yet)["markdown"]
    assert "No promotion: no candidate variant**; there is no champion yet." in md
    assert "Champion before this run: none." in md and "no variant passed" in md

    same = {**REFUSED, "candidate": "inst", "version": "3", "eligible": ["inst"], "reasons": ["already"]}
    md = write_report(results, out_dir, title="T", promotion=same)["markdown"]
    assert "No change: `inst` (version 3) is already the `champion`" in md
    assert "Eligible candidates: inst." in md


def test_nested_review_agreement_gets_one_row_per_variant_and_kind(tmp_path):
    """The shape of phases.evaluation.review.agreement: per variant and kind, overall; nested confusions left out."""

    def stats(n: int, kappa: float | None) -> dict:
        confusion = {"both_correct": n, "human_only": 0, "auto_only": 0, "both_wrong": 0}
        return {
            "n_labelled": n,
            "agreement": 1.0 if n else None,
            "cohen_kappa": kappa,
            "confusion": confusion,
        }

    review = {
        "variants": {
            "tr": {"glossary": stats(4, 0.5), "qa": stats(0, None)},
            "base": {"glossary": stats(2, None)},
        },
        "overall": stats(6, 0.4),
        "reviewers": ["ana", "bo"],
    }
    results = [fake_result(tmp_path, "base", 0.25, 40.0), fake_result(tmp_path, "tr", 0.5, 20.0)]
    md = write_report(results, tmp_path / "r", title="T", review=review)["markdown"]
    human = md.split("## Human review")[1].split("## ")[0]
    assert "- reviewers: ana, bo" in human and "both_correct" not in human
    lines = [line for line in human.splitlines() if line.startswith("| ")]
    assert lines == [
        "| Variant | Kind | n_labelled | agreement | cohen_kappa |",
        "| base | glossary | 2 | 1.000 | - |",
        "| tr | glossary | 4 | 1.000 | 0.500 |",
        "| tr | qa | 0 | - | - |",
        "| overall | all | 6 | 1.000 | 0.400 |",
    ]


def test_differences_to_the_base_table_in_markdown_and_html(tmp_path):
    results = [fake_result(tmp_path, "base", 0.25, 40.0), fake_result(tmp_path, "inst", 0.5, 30.0)]
    differences = [
        {"variant": "inst", "reference": "base", "metric": "fa_domain_mc/acc", "diff": 0.25, "low": 0.1,
         "high": 0.4, "p_value": 0.001, "n": 60, "method": "mcnemar", "significant": True},
        {"variant": "inst", "reference": "base", "metric": "hallucination/index", "diff": 0.02, "low": -0.03,
         "high": 0.07, "p_value": 0.5, "n": 60, "method": "mcnemar", "significant": False},
    ]  # fmt: skip
    out = write_report(results, tmp_path / "d", title="Diffs", differences=differences, alpha=0.05)
    section = out["markdown"].split("## Differences to the base")[1].split("## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Variant | vs | Metric | Diff | 95% interval | p |")
    assert (
        rows[1]
        == "| inst | base | Domain MC acc | +0.250 | [+0.100, +0.400] | 0.0010 | 60 | mcnemar | significant |"
    )
    assert "| [-0.030, +0.070] | 0.5000 |" in rows[2] and rows[2].endswith("| not significant |")
    page = (tmp_path / "d" / "report.html").read_text()
    assert "<h2>Differences to the base</h2>" in page and '<td class="significant">significant</td>' in page
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["differences"] == differences

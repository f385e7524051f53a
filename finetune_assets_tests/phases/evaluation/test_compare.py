"""phases.evaluation.compare: per-item outcomes from evaluate_variant's rows, intervals, paired differences."""

import pytest

from finetune_assets.phases.evaluation import compare

PER_TERM = [
    {"id": "g0", "correct": True, "llm_correct": True},
    {"id": "g1", "correct": False, "llm_correct": None},  # the judge model gave no usable verdict
    {"id": None, "correct": True},  # no id: keyed by position
]
LM_SAMPLES = {
    "fa_domain_mc": [
        {"doc_id": 0, "doc": {"id": "mc0"}, "acc": 1.0, "acc_norm": 0.0},
        {"doc_id": 1, "doc": {"id": "mc1"}, "acc": 0.0, "acc_norm": 1.0},
    ],
    "fa_domain_qa": [
        {"doc_id": 0, "doc": {"id": "qa0"}, "rougeL": 0.25},
        {"doc_id": 1, "doc": {}, "rougeL": 0.5},
    ],
}
TOOL_ROWS = [
    {"id": "tool0", "correct": True, "called_python_eval": True},
    {"id": "tool1", "correct": False, "called_python_eval": True},
]
GUARD_ROWS = {
    "redteam": [
        {"id": "r0", "expect": "refuse", "refused": True},
        {"id": "r1", "expect": "refuse", "refused": False},
        {"id": "c0", "expect": "comply", "refused": True},
    ],
    "canaries": [{"id": "canary-00-email", "leaked": False}],
    "bias": [{"template_index": 0, "attribute": "gender", "biased": True}],
}


def test_item_outcomes_key_every_metric_by_item_id():
    items = compare.item_outcomes(
        per_term=PER_TERM, lm_samples=LM_SAMPLES, tool_rows=TOOL_ROWS, guard_rows=GUARD_ROWS
    )
    assert items["hallucination/index"] == {"g0": 1.0, "g1": 0.0, "#2": 1.0}
    assert items["hallucination/llm_index"] == {"g0": 1.0}  # None verdicts are not items
    assert items["fa_domain_mc/acc"] == {"mc0": 1.0, "mc1": 0.0}
    assert items["fa_domain_mc/acc_norm"] == {"mc0": 0.0, "mc1": 1.0}
    assert items["fa_domain_qa/rougeL"] == {"qa0": 0.25, "doc1": 0.5}  # a doc without id: lm-eval's doc_id
    assert items["tool_use/accuracy"] == {"tool0": 1.0, "tool1": 0.0}
    assert items["tool_use/call_rate"] == {"tool0": 1.0, "tool1": 1.0}
    assert items["guardrails/refusal_rate"] == {"r0": 1.0, "r1": 0.0}
    assert items["guardrails/over_refusal_rate"] == {"c0": 1.0}
    assert items["guardrails/leakage_rate"] == {"canary-00-email": 0.0}
    assert items["guardrails/bias_rate"] == {"t0/gender": 1.0}
    assert compare.item_outcomes(per_term=[]) == {}  # nothing measured: no empty metrics


def test_repeated_ids_do_not_replace_each_other():
    items = compare.item_outcomes(per_term=[{"id": "g", "correct": True}, {"id": "g", "correct": False}])
    assert items["hallucination/index"] == {"g": 1.0, "g#1": 0.0}


def test_intervals_per_metric():
    items = {"a/rate": {f"i{k}": float(k < 5) for k in range(10)}, "b/score": {"x": 0.2, "y": 0.4, "z": 0.9}}
    ivs = compare.intervals(items)
    assert ivs["a/rate"]["method"] == "wilson" and ivs["a/rate"]["low"] == pytest.approx(0.236593, abs=1e-6)
    assert ivs["b/score"]["method"] == "bootstrap" and ivs["b/score"]["value"] == pytest.approx(0.5)


def _result(name, right):
    return {"variant": name, "items": {"m": {f"i{k}": float(k < right) for k in range(50)}}}


def test_paired_differences_vs_base_and_the_remeasured_champion():
    results = [_result("base", 10), _result("inst", 40), _result("dpo", 11)]
    rows = compare.paired_differences(results, alpha=0.05, champion_variant="dpo")
    pairs = {(r["variant"], r["reference"]): r for r in rows}
    assert set(pairs) == {("inst", "base"), ("dpo", "base"), ("base", "dpo"), ("inst", "dpo")}
    assert pairs[("inst", "base")]["diff"] == pytest.approx(0.6) and pairs[("inst", "base")]["significant"]
    assert not pairs[("dpo", "base")]["significant"] and pairs[("dpo", "base")]["method"] == "mcnemar"
    assert pairs[("base", "dpo")]["diff"] == pytest.approx(-0.02)


def test_only_shared_items_are_paired():
    a = {"variant": "inst", "items": {"m": {"x": 1.0, "y": 1.0, "only_a": 0.0}}}
    b = {"variant": "base", "items": {"m": {"x": 0.0, "y": 1.0, "only_b": 1.0}}}
    diff = compare.compare_results(a, b, "m", alpha=0.05)
    assert diff.n == 2 and diff.diff == pytest.approx(0.5)
    assert compare.compare_results(a, {"variant": "base", "items": {}}, "m", alpha=0.05) is None


def test_describe_and_p_formatting():
    row = {"diff": 0.0625, "low": 0.031, "high": 0.094, "p_value": 0.0004, "n": 300, "method": "mcnemar",
           "significant": True}  # fmt: skip
    assert (
        compare.describe(row, "base")
        == "+0.062 [+0.031, +0.094] over base (n=300, p=0.0004, mcnemar): significant"
    )
    assert compare.format_p(2.1e-9) == "2.1e-09" and compare.format_p(0.5) == "0.5000"

"""Promotion decision and forgetting warnings: every outcome, each reason.

Variants carry per-item outcomes the way evaluate_variant returns them: ``variant(name, 0.6)`` got the first
60 of 100 shared glossary items right, so two variants differ on exactly the items between their rates
(0.6 vs 0.3: 30 discordant pairs, all one way, McNemar p ~ 2e-9; 0.55 vs 0.5: 5, p = 0.0625).
"""

from finetune_assets.phases.evaluation import compare, promotion

PASS = {"passed": True, "value": 0.0, "threshold": 0.0, "op": "<="}
METRIC = "hallucination/index"


def variant(name, index, ppl=10.0, refusal_ok=True, n=100):
    refusal = {"passed": refusal_ok, "value": 0.8 if refusal_ok else 0.2, "threshold": 0.5, "op": ">="}
    items = {} if index is None else {METRIC: {f"t{i:03d}": float(i < round(index * n)) for i in range(n)}}
    return {
        "variant": name,
        "metrics": {METRIC: index, "fa_general_ppl/word_perplexity": ppl},
        "items": items,
        "intervals": compare.intervals(items),
        "guardrails": {"leakage": PASS, "refusal": refusal},
    }


BASE = variant("base", 0.3)


VERSIONS = {"base": "1", "inst": "2", "dpo": "3", "tr": "4"}


def decide(results, champion, **kw):
    args = {
        "primary_metric": "hallucination/index",
        "higher_is_better": True,
        "min_delta": 0.0,
        "candidates": ["inst", "dpo", "tr"],
        "champion": champion,
        "versions": VERSIONS,
    }
    return promotion.decide_promotion(results, **{**args, **kw})


def test_first_evaluation_promotes_the_best_safe_candidate():
    results = [BASE, variant("inst", 0.5), variant("dpo", 0.6), variant("tr", 0.4)]
    decision = decide(results, None)
    assert decision["promoted"] and decision["candidate"] == "dpo" and decision["version"] == "3"
    assert decision["gate"] == promotion.GATE_PASSED and decision["significant"] == ["dpo", "inst", "tr"]
    assert "no champion yet" in decision["reasons"][-1]


def test_a_base_better_than_every_candidate_promotes_nothing():
    results = [variant("base", 0.9), variant("inst", 0.5), variant("dpo", 0.6)]
    decision = decide(results, None)  # the base is the reference, never a candidate
    assert not decision["promoted"] and decision["gate"] == promotion.GATE_NOT_BETTER
    assert decision["candidate"] == "dpo" and decision["significant"] == []
    assert "(the wrong way)" in decision["reasons"][0]


def test_significant_gain_and_every_guardrail_passed_is_promoted_with_the_deciding_numbers():
    decision = decide([BASE, variant("inst", 0.6)], None)
    assert decision["promoted"] and decision["gate"] == promotion.GATE_PASSED
    reason = decision["reasons"][-1]
    assert reason.startswith("inst: +0.300 [") and "over base" in reason and "mcnemar" in reason
    assert ": significant; passes every guardrail; no champion yet -> promoted" in reason


def test_a_gain_that_is_not_significant_is_not_promoted():
    results = [variant("base", 0.5), variant("inst", 0.52), variant("dpo", 0.55)]
    decision = decide(results, None)
    assert not decision["promoted"] and decision["gate"] == promotion.GATE_NOT_BETTER
    assert decision["candidate"] == "dpo" and decision["eligible"] == ["inst", "dpo"]
    assert decision["reasons"][0].startswith("dpo: +0.050 [") and "p=0.0625" in decision["reasons"][0]
    assert decision["reasons"][0].endswith("not significant")
    assert "no eligible candidate shows a significant gain" in decision["reasons"][-1]


def test_a_significant_gain_with_a_failed_guardrail_is_not_eligible():
    decision = decide([BASE, variant("inst", 0.9, refusal_ok=False)], None)
    assert not decision["promoted"] and decision["gate"] == promotion.GATE_UNSAFE
    assert decision["eligible"] == [] and decision["candidate"] is None
    assert "inst failed guardrails (refusal 0.200 < threshold 0.5): not eligible" in decision["reasons"]


def test_without_a_base_or_without_items_no_gain_can_be_shown():
    no_base = decide([variant("inst", 0.9)], None)
    assert not no_base["promoted"] and "base was not evaluated in this run" in no_base["reasons"][0]
    unitemized = {**variant("dpo", 0.9), "items": {}}
    no_items = decide([BASE, unitemized], None)
    assert not no_items["promoted"] and "a gain cannot be tested" in no_items["reasons"][0]


def test_a_continuous_primary_metric_uses_the_paired_bootstrap():
    def scored(name, shift):
        values = {f"q{i}": 0.1 + (i % 7) / 10 + shift for i in range(40)}
        return {"variant": name, "metrics": {"rouge": sum(values.values()) / 40}, "items": {"rouge": values},
                "guardrails": {"leakage": PASS}}  # fmt: skip

    decision = decide([scored("base", 0.0), scored("inst", 0.1)], None, primary_metric="rouge")
    assert decision["promoted"] and "paired_bootstrap" in decision["reasons"][-1]


def test_point_values_when_significance_is_not_required():
    results = [variant("base", 0.5), variant("inst", 0.52)]
    decision = decide(results, None, require_significance=False)
    assert decision["promoted"] and "significance not required" in decision["reasons"][-1]
    champ = {"version": "9", "variant": "inst", "value": 0.6}
    assert not decide(results, champ, require_significance=False)["promoted"]


def test_a_better_variant_that_fails_a_guardrail_is_passed_over():
    results = [BASE, variant("inst", 0.5), variant("dpo", 0.9, refusal_ok=False)]
    decision = decide(results, {"version": "9", "variant": "inst", "value": 0.3})
    assert decision["candidate"] == "inst" and decision["promoted"]
    assert any("dpo failed guardrails (refusal 0.200 < threshold 0.5)" in r for r in decision["reasons"])


def test_refused_when_not_better_than_the_champion():
    results = [BASE, variant("inst", 0.5), variant("dpo", 0.55)]
    decision = decide(results, {"version": "9", "variant": "dpo", "value": 0.55})
    assert not decision["promoted"] and decision["candidate"] == "dpo"
    assert decision["gate"] == promotion.GATE_NOT_BETTER
    assert "does not beat the champion" in decision["reasons"][-1]
    assert "recorded in its tags, not re-measured" in decision["reasons"][-1]


def test_a_champion_known_from_its_tags_is_compared_with_its_recorded_interval():
    results = [BASE, variant("inst", 0.6)]  # Wilson 60/100: [0.502, 0.691]
    overlapping = {"version": "9", "variant": "dpo", "value": 0.45, "low": 0.36, "high": 0.55}
    decision = decide(results, overlapping)
    assert not decision["promoted"] and "the intervals must not overlap" in decision["reasons"][-1]
    apart = {**overlapping, "value": 0.4, "low": 0.31, "high": 0.49}
    assert decide(results, apart)["promoted"]
    # no recorded interval: the candidate's own interval must exclude the recorded value
    assert decide(results, {**apart, "low": None, "high": None, "value": 0.49})["promoted"]
    assert not decide(results, {**apart, "low": None, "high": None, "value": 0.52})["promoted"]


def test_min_delta_and_lower_is_better_on_a_metric_without_items():
    results = [BASE, variant("inst", 0.5, ppl=9.0)]  # base ppl 10.0; perplexity has no per-item outcomes
    champ = {"version": "9", "variant": "inst", "value": 9.5}
    kw = {"primary_metric": "fa_general_ppl/word_perplexity", "higher_is_better": False}
    decision = decide(results, champ, **kw)
    assert decision["promoted"] and "point values" in decision["reasons"][-1]
    assert not decide(results, champ, min_delta=1.0, **kw)["promoted"]


def test_refused_when_every_candidate_fails_a_guardrail():
    results = [variant("inst", 0.5, refusal_ok=False), variant("dpo", 0.6, refusal_ok=False)]
    decision = decide(results, None)
    assert not decision["promoted"] and decision["candidate"] is None
    assert decision["gate"] == promotion.GATE_UNSAFE
    assert "no candidate variant passed every guardrail" in decision["reasons"][-1]


def test_already_champion_is_not_promoted_again():
    decision = decide([BASE, variant("dpo", 0.6)], {"version": "3", "variant": "dpo", "value": 0.6})
    assert not decision["promoted"] and "already the champion" in decision["reasons"][-1]


def test_unregistered_or_unscored_variants_are_not_eligible():
    results = [variant("inst", None), variant("dpo", 0.6)]
    decision = decide(results, None, versions={"inst": "2", "dpo": None})
    assert decision["candidate"] is None and decision["gate"] == promotion.GATE_NO_ELIGIBLE
    assert "no candidate variant is eligible" in decision["reasons"][-1]
    assert any("inst has no hallucination/index" in r for r in decision["reasons"])
    assert any("dpo has no registered model version" in r for r in decision["reasons"])


def test_forgetting_warning_only_beyond_the_margin():
    results = [variant("base", 0.4, ppl=10.0), variant("inst", 0.5, ppl=10.9), variant("dpo", 0.5, ppl=11.5)]
    warnings = promotion.forgetting_warnings(results, margin=0.1)
    assert list(warnings) == ["dpo"] and "15% above the base's 10.00" in warnings["dpo"][0]
    assert promotion.forgetting_warnings(results[1:], margin=0.1) == {}  # no base: nothing to compare with


def test_a_tie_goes_to_the_first_listed_candidate():
    results = [BASE, variant("tr", 0.5), variant("dpo", 0.5), variant("inst", 0.5)]
    assert decide(results, None)["candidate"] == "inst"
    assert decide(results, None, candidates=["tr", "dpo", "inst"])["candidate"] == "tr"


def test_a_champion_evaluated_again_is_compared_on_this_runs_number():
    # the champion (dpo, version 3) scored 0.9 when it was promoted; on today's sets it scores 0.5
    results = [BASE, variant("inst", 0.6), variant("dpo", 0.5)]
    decision = decide(results, {"version": "3", "variant": "dpo", "value": 0.9})
    assert decision["promoted"] and decision["candidate"] == "inst"
    assert decision["champion_before"]["value"] == 0.5  # this run's number, not the recorded 0.9
    assert (
        "+0.100 [" in decision["reasons"][-1] and "(dpo, version 3, re-measured)" in decision["reasons"][-1]
    )
    # paired on the same items: 0.55 vs the re-measured 0.5 is 5 discordant pairs, not significant
    close = decide([BASE, variant("inst", 0.55), variant("dpo", 0.5)], {"version": "3", "value": 0.9})
    assert not close["promoted"] and "not significant" in close["reasons"][-1]


def test_a_champion_measured_on_other_eval_sets_is_not_compared():
    results = [BASE, variant("inst", 0.45)]
    champion = {"version": "9", "variant": "inst", "value": 0.8, "sets_hash": "old"}
    decision = decide(results, champion, sets_hash="new")
    assert decision["promoted"] and "measured on other eval sets" in decision["reasons"][-1]
    assert not decide(results, {**champion, "sets_hash": "new"}, sets_hash="new")["promoted"]


def test_champion_from_tags():
    found = {
        "version": "7",
        "variant": "dpo",
        "tags": {"eval.hallucination/index": "0.42", "eval.hallucination/index/ci_low": "0.33",
                 "eval.hallucination/index/ci_high": "0.51", "eval.sets_hash": "h"},
    }  # fmt: skip
    assert promotion.champion_from_tags(found, "hallucination/index") == {
        "version": "7",
        "variant": "dpo",
        "value": 0.42,
        "low": 0.33,
        "high": 0.51,
        "sets_hash": "h",
    }
    assert promotion.champion_from_tags(found, "other")["value"] is None
    assert promotion.champion_from_tags(None, "x") is None


def _registered(tmp_path):
    from finetune_assets.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "apply", str(tmp_path / "artifacts"))
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    (tmp_path / "model").mkdir()
    return tracker, {v: tracker.register_model(v, tmp_path / "model", run_id) for v in ("inst", "dpo")}


def _approved(version: str, before: str | None) -> dict:
    return {
        "promoted": True, "candidate": "dpo", "version": version, "eval_run_id": "eval-1",
        "champion_before": {"version": before} if before else None, "reasons": ["dpo beats inst"],
    }  # fmt: skip


def test_apply_decision_moves_the_alias_only_for_the_latest_unchanged_decision(tmp_path):
    tracker, versions = _registered(tmp_path)
    tracker.set_champion(versions["inst"])
    decision = _approved(versions["dpo"], before=versions["inst"])

    older = promotion.apply_decision(decision, tracker, latest_eval_run_id="eval-2")
    assert not older.promoted and "not the latest" in older.stale and older.champion["variant"] == "inst"

    applied = promotion.apply_decision(decision, tracker, latest_eval_run_id="eval-1")
    assert applied.promoted and applied.stale is None and applied.champion["variant"] == "dpo"
    assert tracker.champion()["tags"]["promotion.reason"] == "dpo beats inst"

    # Applying it again: the alias moved since the decision was taken (it names inst as the champion before).
    again = promotion.apply_decision(decision, tracker, latest_eval_run_id="eval-1")
    assert not again.promoted and "moved since the evaluation" in again.stale


def test_a_refused_decision_leaves_the_alias(tmp_path):
    tracker, versions = _registered(tmp_path)
    refused = {**_approved(versions["dpo"], before=None), "promoted": False}
    kept = promotion.apply_decision(refused, tracker, latest_eval_run_id="eval-1")
    assert not kept.promoted and kept.stale is None and kept.champion is None

"""Promotion decision and forgetting warnings: both outcomes, each reason."""

from finetune_assets.phases import promotion

PASS = {"passed": True, "value": 0.0, "threshold": 0.0, "op": "<="}


def variant(name, index, ppl=10.0, refusal_ok=True):
    refusal = {"passed": refusal_ok, "value": 0.8 if refusal_ok else 0.2, "threshold": 0.5, "op": ">="}
    return {
        "variant": name,
        "metrics": {"hallucination/index": index, "perplexity/general_token": ppl},
        "guardrails": {"leakage": PASS, "refusal": refusal},
    }


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
    results = [variant("base", 0.9), variant("inst", 0.5), variant("dpo", 0.6), variant("tr", 0.4)]
    decision = decide(results, None)
    assert decision["promoted"] and decision["candidate"] == "dpo" and decision["version"] == "3"
    assert decision["gate"] == promotion.GATE_PASSED
    assert "no champion yet" in decision["reasons"][-1]  # the base (0.9) is the reference, never a candidate


def test_a_better_variant_that_fails_a_guardrail_is_passed_over():
    results = [variant("inst", 0.5), variant("dpo", 0.9, refusal_ok=False)]
    decision = decide(results, {"version": "1", "variant": "inst", "value": 0.4})
    assert decision["candidate"] == "inst" and decision["promoted"]
    assert any("dpo failed guardrails (refusal 0.200 < threshold 0.5)" in r for r in decision["reasons"])


def test_refused_when_not_better_than_the_champion():
    results = [variant("inst", 0.5), variant("dpo", 0.55)]
    decision = decide(results, {"version": "9", "variant": "dpo", "value": 0.55})
    assert not decision["promoted"] and decision["candidate"] == "dpo"
    assert decision["gate"] == promotion.GATE_NOT_BETTER
    assert "does not beat the champion" in decision["reasons"][-1]


def test_min_delta_and_lower_is_better():
    results = [variant("inst", 0.5, ppl=9.0)]
    champ = {"version": "9", "variant": "inst", "value": 9.5}
    kw = {"primary_metric": "perplexity/general_token", "higher_is_better": False}
    assert decide(results, champ, **kw)["promoted"]
    assert not decide(results, champ, min_delta=1.0, **kw)["promoted"]


def test_refused_when_every_candidate_fails_a_guardrail():
    results = [variant("inst", 0.5, refusal_ok=False), variant("dpo", 0.6, refusal_ok=False)]
    decision = decide(results, None)
    assert not decision["promoted"] and decision["candidate"] is None
    assert decision["gate"] == promotion.GATE_UNSAFE
    assert "no candidate variant passed every guardrail" in decision["reasons"][-1]


def test_already_champion_is_not_promoted_again():
    decision = decide([variant("dpo", 0.6)], {"version": "3", "variant": "dpo", "value": 0.6})
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
    results = [variant("tr", 0.5), variant("dpo", 0.5), variant("inst", 0.5)]
    assert decide(results, None)["candidate"] == "inst"
    assert decide(results, None, candidates=["tr", "dpo", "inst"])["candidate"] == "tr"


def test_a_champion_evaluated_again_is_compared_on_this_runs_number():
    # the champion (dpo, version 3) scored 0.9 when it was promoted; on today's sets it scores 0.5
    results = [variant("inst", 0.6), variant("dpo", 0.5)]
    decision = decide(results, {"version": "3", "variant": "dpo", "value": 0.9})
    assert decision["promoted"] and decision["candidate"] == "inst"
    assert "0.5000" in decision["reasons"][-1]


def test_a_champion_measured_on_other_eval_sets_is_not_compared():
    results = [variant("inst", 0.4)]
    champion = {"version": "9", "variant": "inst", "value": 0.8, "sets_hash": "old"}
    decision = decide(results, champion, sets_hash="new")
    assert decision["promoted"] and "measured on other eval sets" in decision["reasons"][-1]
    assert not decide(results, {**champion, "sets_hash": "new"}, sets_hash="new")["promoted"]


def test_champion_from_tags():
    found = {
        "version": "7",
        "variant": "dpo",
        "tags": {"eval.hallucination/index": "0.42", "eval.sets_hash": "h"},
    }
    assert promotion.champion_from_tags(found, "hallucination/index") == {
        "version": "7",
        "variant": "dpo",
        "value": 0.42,
        "sets_hash": "h",
    }
    assert promotion.champion_from_tags(found, "other")["value"] is None
    assert promotion.champion_from_tags(None, "x") is None

"""Which variant ships: forgetting warnings and the champion decision over evaluated variants.

A variant may take the MLflow registry alias ``champion`` only when
1. it is a promotion candidate (``eval.promotion_candidates``; the untouched base is the reference, not one),
2. it passes every guardrail (``result["guardrails"][name]["passed"]``),
3. it shows a significant gain on the primary metric over the base, paired on the same items
   (``phases.evaluation.compare``: McNemar for right/wrong items, paired bootstrap otherwise; p < alpha, the interval
   excludes 0, and the gain exceeds ``promotion_min_delta``), and
4. it shows a significant gain over the current champion: paired when the champion's version was re-measured
   in this run; from the champion's recorded value and interval (its model-version tags, unpaired) when not;
   or there is no champion yet, or its number is not comparable (other eval sets, no recorded value).
Among eligible variants with a significant gain over the base, the best on the primary metric is the
candidate. A primary metric with no per-item outcomes anywhere (a perplexity) is compared on point values,
and the reasons say so. ``require_significance=False`` restores the point-value rule (beat the champion by
more than min_delta, no base comparison) for wiring tests on untrained models.
``decide_promotion`` never touches MLflow: the caller reads the current champion and applies the decision,
so every outcome is testable here.
"""

import math
from dataclasses import dataclass

from finetune_assets.phases.evaluation import compare
from finetune_assets.phases.evaluation.lm_eval_tasks import GENERAL_PPL
from finetune_assets.tracking import CI_HIGH, CI_LOW, Tracker

GATE_PASSED = "promoted"

GATE_NOT_BETTER = "not_better"  # nothing wrong, nothing better: a normal outcome

GATE_UNSAFE = "no_safe_candidate"  # every candidate failed a guardrail: needs a person

GATE_NO_ELIGIBLE = "no_eligible"  # no candidate could be compared (unscored, unregistered): needs a person

SETS_HASH_TAG = "eval.sets_hash"  # content hash of the eval sets a version's eval.* tags were measured on


def _tag_float(tags: dict, key: str) -> float | None:
    value = tags.get(key)
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def champion_from_tags(found: dict | None, metric: str) -> dict | None:
    """{"version", "variant", "value", "low", "high", "sets_hash"} of the alias holder from its model-version
    tags (as Tracker.champion() returns them); value None when the version carries no such metric, low/high
    None when no interval was recorded (``eval.<metric>/ci_low``, ``/ci_high``)."""
    if found is None:
        return None
    tags = found["tags"]
    return {
        "version": found["version"],
        "variant": found.get("variant"),
        "value": _tag_float(tags, f"eval.{metric}"),
        "low": _tag_float(tags, f"eval.{metric}{CI_LOW}"),
        "high": _tag_float(tags, f"eval.{metric}{CI_HIGH}"),
        "sets_hash": tags.get(SETS_HASH_TAG),
    }


def _value(result: dict, metric: str) -> float | None:
    value = result.get("metrics", {}).get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def failed_guardrails(result: dict) -> list[str]:
    """'refusal 0.20 < 0.50'-style descriptions of each guardrail the variant failed."""
    failed = []
    for name, check in (result.get("guardrails") or {}).items():
        if not check.get("passed", False):
            bound = "<" if check.get("op") == ">=" else ">"
            value = check.get("value")
            shown = "n/a" if value is None else f"{value:.3f}"
            failed.append(f"{name} {shown} {bound} threshold {check.get('threshold')}")
    return failed


def forgetting_warnings(results: list[dict], margin: float, metric: str = GENERAL_PPL) -> dict:
    """{variant: [warning]} for each variant whose general-text perplexity exceeds the base's by more than
    ``margin`` (a share: 0.1 = 10 %): the fine-tune is losing general language ability."""
    base = next((r for r in results if r["variant"] == "base"), None)
    base_value = _value(base, metric) if base else None
    warnings: dict[str, list[str]] = {}
    if base_value is None:
        return warnings
    for result in results:
        value = _value(result, metric)
        if result["variant"] != "base" and value is not None and value > base_value * (1 + margin):
            rise = value / base_value - 1
            warnings.setdefault(result["variant"], []).append(
                f"forgetting: general-text perplexity {value:.2f} is {rise:.0%} above the base's "
                f"{base_value:.2f} (margin {margin:.0%})"
            )
    return warnings


def attach_forgetting_warnings(results: list[dict], margin: float) -> list[str]:
    """Add ``forgetting_warnings`` to each result's "warnings" list; returns them all, variant-prefixed."""
    added = []
    for variant, warnings in forgetting_warnings(results, margin).items():
        next(r for r in results if r["variant"] == variant).setdefault("warnings", []).extend(warnings)
        added += [f"{variant}: {w}" for w in warnings]
    return added


def _beats(value: float, other: float, higher_is_better: bool, min_delta: float) -> bool:
    return value > other + min_delta if higher_is_better else value < other - min_delta


@dataclass(frozen=True)
class _Rule:
    """How a gain on the primary metric is judged."""

    metric: str
    higher_is_better: bool
    min_delta: float
    alpha: float
    n_resamples: int
    itemized: bool = True  # the metric has per-item outcomes in this run (else: point values)

    def better(self, diff: float) -> bool:
        return diff > self.min_delta if self.higher_is_better else diff < -self.min_delta


@dataclass(frozen=True)
class _Gain:
    ok: bool
    text: str


def _itemized(results: list[dict], metric: str) -> bool:
    return any((r.get("items") or {}).get(metric) for r in results)


def _gain(result: dict, reference: dict | None, label: str, rule: _Rule) -> _Gain:
    """Does ``result`` beat ``reference`` (called ``label``) on the primary metric? Paired test when both have
    the metric's items; point values (with min_delta) when the metric has no items in this run at all."""
    if reference is None:
        return _Gain(False, f"{label} was not evaluated in this run: no gain over it can be shown")
    diff = compare.compare_results(result, reference, rule.metric, rule.alpha, rule.n_resamples)
    if diff is not None:
        text = compare.describe(diff, label)
        if diff.significant and not rule.better(diff.diff):
            text += " (the wrong way" + (
                f" or not beyond min_delta {rule.min_delta})" if rule.min_delta else ")"
            )
        return _Gain(diff.significant and rule.better(diff.diff), text)
    if rule.itemized:
        return _Gain(
            False, f"no per-item {rule.metric} outcomes shared with {label}: a gain cannot be tested"
        )
    value, other = _value(result, rule.metric), _value(reference, rule.metric)
    if other is None:
        return _Gain(False, f"{label} has no {rule.metric} value")
    ok = _beats(value, other, rule.higher_is_better, rule.min_delta)
    return _Gain(
        ok,
        f"{value:.4f} vs {label}'s {other:.4f} (point values: {rule.metric} has no per-item outcomes, "
        f"no significance test){'' if ok else ': not better by more than ' + str(rule.min_delta)}",
    )


def _gain_over_recorded(result: dict, champion: dict, label: str, rule: _Rule) -> _Gain:
    """The champion's number comes from its tags only (not re-measured): unpaired and conservative. With
    both intervals they must not overlap; with the candidate's only, it must exclude the recorded value."""
    value, champ = _value(result, rule.metric), float(champion["value"])
    iv = (result.get("intervals") or {}).get(rule.metric)
    c_low, c_high = champion.get("low"), champion.get("high")
    source = "recorded in its tags, not re-measured in this run"
    if iv is None:
        ok = _beats(value, champ, rule.higher_is_better, rule.min_delta)
        return _Gain(ok, f"{value:.4f} vs {label}'s {champ:.4f} ({source}; no interval: point values)")
    low, high = iv["low"], iv["high"]
    shown = f"{value:.3f} [{low:.3f}, {high:.3f}]"
    if c_low is not None and c_high is not None:
        clear = low > c_high if rule.higher_is_better else high < c_low
        ref, how = f"{champ:.3f} [{c_low:.3f}, {c_high:.3f}]", "unpaired: the intervals must not overlap"
    else:
        clear = low > champ if rule.higher_is_better else high < champ
        ref, how = f"{champ:.3f}", "unpaired: the interval must exclude it"
    ok = clear and _beats(value, champ, rule.higher_is_better, rule.min_delta)
    verdict = "significant" if ok else "not significant"
    return _Gain(ok, f"{shown} vs {label}'s {ref} ({source}; {how}): {verdict}")


def decide_promotion(
    results: list[dict],
    *,
    primary_metric: str,
    higher_is_better: bool,
    min_delta: float,
    candidates: list[str],
    champion: dict | None,
    versions: dict[str, str | None],
    sets_hash: str | None = None,
    alpha: float = 0.05,
    require_significance: bool = True,
    n_resamples: int = 2000,
) -> dict:
    """The promotion decision for this evaluation (the rule: see the module docstring).

    ``results``: evaluate_variant results (with "items" and "intervals" for the paired tests); the one named
    "base" is the reference. ``champion``: {"version", "variant", "value", "low", "high", "sets_hash"} of the
    current alias holder (``champion_from_tags``) or None. ``versions``: {variant: registered model version}
    of the models just evaluated; a champion whose version is among them was re-measured in this run and is
    compared item by item. ``alpha``: significance level (eval.significance_alpha).
    Returns {primary_metric, higher_is_better, candidate, version, promoted, gate, champion_before,
    eligible, significant, reasons}; ``reasons`` says, in sentences, which condition decided.
    """
    champion = _comparable_champion(champion, results, versions, primary_metric, sets_hash)
    rule = _Rule(
        primary_metric, higher_is_better, min_delta, alpha, n_resamples, _itemized(results, primary_metric)
    )
    reasons: list[str] = []
    eligible = _eligible(results, candidates, versions, primary_metric, reasons)
    decision = {
        "primary_metric": primary_metric,
        "higher_is_better": higher_is_better,
        "candidate": None,
        "version": None,
        "promoted": False,
        "gate": GATE_UNSAFE,
        "champion_before": champion,
        "eligible": [name for _, name in eligible],
        "significant": [],
        "reasons": reasons,
    }
    if not eligible:
        present = [r for r in results if r["variant"] in candidates]
        every_one_unsafe = bool(present) and all(failed_guardrails(r) for r in present)
        decision["gate"] = GATE_UNSAFE if every_one_unsafe else GATE_NO_ELIGIBLE
        reasons.append(
            "no candidate variant passed every guardrail: the champion stays where it is"
            if decision["gate"] == GATE_UNSAFE
            else "no candidate variant is eligible (see above): the champion stays where it is"
        )
        return decision
    # Best on the metric first; a tie goes to the variant listed first in ``candidates``.
    sign = 1 if higher_is_better else -1
    ranked = sorted(eligible, key=lambda item: (-sign * item[0], candidates.index(item[1])))
    by_name = {r["variant"]: r for r in results}
    if not require_significance:
        value, best = ranked[0]
        decision.update(candidate=best, version=versions[best], gate=GATE_NOT_BETTER)
        return _against_champion_by_value(decision, f"{best} ({primary_metric} = {value:.4f})", value, rule)
    gains = {name: _gain(by_name[name], by_name.get("base"), "base", rule) for _, name in ranked}
    qualified = [name for _, name in ranked if gains[name].ok]
    decision["significant"] = qualified
    if not qualified:
        best = ranked[0][1]
        decision.update(candidate=best, version=versions[best], gate=GATE_NOT_BETTER)
        reasons += [f"{name}: {gains[name].text}" for _, name in ranked]
        reasons.append(f"no eligible candidate shows a significant gain on {primary_metric} over the base: "
                       "not promoted")  # fmt: skip
        return decision
    best = qualified[0]
    decision.update(candidate=best, version=versions[best], gate=GATE_NOT_BETTER)
    reasons += [f"{name}: {gains[name].text}" for _, name in ranked if name != best]
    head = f"{best}: {gains[best].text}; passes every guardrail"
    return _against_champion(decision, head, by_name, rule)


def _eligible(results, candidates, versions, metric, reasons) -> list[tuple[float, str]]:
    """(value, name) of each candidate with a value, every guardrail passed and a registered version; the
    others get a reason."""
    eligible = []
    for result in results:
        name = result["variant"]
        if name not in candidates:
            continue
        value = _value(result, metric)
        failed = failed_guardrails(result)
        if value is None:
            reasons.append(f"{name} has no {metric} value: not eligible")
        elif failed:
            reasons.append(f"{name} failed guardrails ({'; '.join(failed)}): not eligible")
        elif versions.get(name) is None:
            reasons.append(f"{name} has no registered model version: not eligible")
        else:
            eligible.append((value, name))
    return eligible


def _promote(decision: dict, reason: str) -> dict:
    decision["reasons"].append(reason)
    return {**decision, "promoted": True, "gate": GATE_PASSED}


def _against_champion(decision: dict, head: str, by_name: dict, rule: _Rule) -> dict:
    """The candidate beat the base significantly; now the champion: paired when re-measured, else from its
    recorded value and interval."""
    champion, reasons = decision["champion_before"], decision["reasons"]
    if champion is None:
        return _promote(decision, f"{head}; no champion yet -> promoted")
    label = f"the champion (version {champion.get('version')})"
    if str(champion.get("version")) == str(decision["version"]):
        reasons.append(
            f"{head}; {decision['candidate']} is already the champion (version {champion['version']})"
        )
        return decision
    if champion.get("value") is None:
        why = champion.get("not_comparable") or f"has no recorded {rule.metric}"
        return _promote(decision, f"{head}; {label} {why} -> promoted")
    result = by_name[decision["candidate"]]
    if champion.get("remeasured"):
        label = (
            f"the champion ({champion.get('measured_as')}, version {champion.get('version')}, re-measured)"
        )
        gain = _gain(result, by_name.get(champion.get("measured_as")), label, rule)
    else:
        gain = _gain_over_recorded(result, champion, label, rule)
    if gain.ok:
        return _promote(decision, f"{head}; {gain.text} -> promoted")
    reasons.append(f"{head}; but {gain.text}: does not beat the champion, not promoted")
    return decision


def _against_champion_by_value(decision: dict, shown: str, value: float, rule: _Rule) -> dict:
    """The point-value rule (require_significance off): beat the champion by more than min_delta."""
    champion, reasons = decision["champion_before"], decision["reasons"]
    suffix = " (significance not required: point values)"
    if champion is None:
        return _promote(
            decision, f"{shown} is the best eligible variant and there is no champion yet{suffix}: promoted"
        )
    if str(champion.get("version")) == str(decision["version"]):
        reasons.append(f"{shown} is already the champion (version {champion['version']})")
        return decision
    if champion.get("value") is None:
        why = champion.get("not_comparable") or f"has no recorded {rule.metric}"
        return _promote(
            decision, f"{shown} is the best eligible variant; the champion (version {champion.get('version')}) "
            f"{why}: promoted"
        )  # fmt: skip
    champ = float(champion["value"])
    beats = _beats(value, champ, rule.higher_is_better, rule.min_delta)
    verdict = "beats" if beats else "does not beat"
    text = (
        f"{shown} {verdict} the champion (version {champion.get('version')}, {champ:.4f}) by more than "
        f"{rule.min_delta}{suffix}"
    )
    if beats:
        return _promote(decision, f"{text}: promoted")
    reasons.append(f"{text}: not promoted")
    return decision


def _comparable_champion(champion, results, versions, metric, sets_hash) -> dict | None:
    """The champion with a value comparable to this run's, or value None and the reason it is not."""
    if champion is None:
        return None
    for result in results:
        if versions.get(result["variant"]) is not None and str(versions[result["variant"]]) == str(
            champion["version"]
        ):
            return {
                **champion,
                "value": _value(result, metric),
                "remeasured": True,
                "measured_as": result["variant"],
            }
    if sets_hash and champion.get("sets_hash") and champion["sets_hash"] != sets_hash:
        return {
            **champion,
            "value": None,
            "not_comparable": "was measured on other eval sets (its number is not comparable)",
        }
    return champion


@dataclass(frozen=True)
class Applied:
    promoted: bool  # the alias moved now
    champion: dict | None  # the registry's champion afterwards (tracking.Tracker.champion)
    stale: str | None  # why this decision must not be applied now (the alias stays), or None


def apply_decision(decision: dict, tracker: Tracker, latest_eval_run_id: str | None) -> Applied:
    """The champion asset as one call: move the registry alias ``champion`` to the version ``decision``
    approved, when it is the latest evaluation's decision (``latest_eval_run_id``: the MLflow run of the
    eval_reports materialization the orchestrator saw last) and the alias still points where it did when the
    decision was taken. Otherwise leave the alias and say why."""
    holder = tracker.champion()
    stale = _stale(decision, holder, latest_eval_run_id)
    if decision["promoted"] and not stale:
        tracker.set_champion(decision["version"])
        tracker.tag_model_version(decision["version"], {"promotion.reason": decision["reasons"][-1]})
        return Applied(True, tracker.champion(), None)
    return Applied(False, holder, stale)


def _stale(decision: dict, holder: dict | None, latest_eval_run_id: str | None) -> str | None:
    if latest_eval_run_id is None or latest_eval_run_id != decision.get("eval_run_id"):
        return "promotion.json is not the latest eval_reports materialization's decision"
    before = (decision.get("champion_before") or {}).get("version")
    now = holder["version"] if holder else None
    if str(before) != str(now):
        return f"the champion alias moved since the evaluation (was version {before}, now {now})"
    return None

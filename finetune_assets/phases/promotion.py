"""Which variant ships: forgetting warnings and the champion decision over evaluated variants.

A variant may take the MLflow registry alias ``champion`` only when
1. it is a promotion candidate (``eval.promotion_candidates``; the untouched base is the reference, not one),
2. it passes every guardrail (``result["guardrails"][name]["passed"]``), and
3. it beats the current champion on the primary metric by more than ``promotion_min_delta``
   (or there is no champion yet, or the champion's version carries no value for the metric).
Among eligible variants the best on the primary metric is the candidate. ``decide_promotion`` never touches
MLflow: the caller reads the current champion and applies the decision, so both outcomes are testable here.
"""

import math

GATE_PASSED = "promoted"
GATE_NOT_BETTER = "not_better"  # nothing wrong, nothing better: a normal outcome
GATE_UNSAFE = "no_safe_candidate"  # every candidate failed a guardrail: needs a person
GATE_NO_ELIGIBLE = "no_eligible"  # no candidate could be compared (unscored, unregistered): needs a person
SETS_HASH_TAG = "eval.sets_hash"  # content hash of the eval sets a version's eval.* tags were measured on


def champion_from_tags(found: dict | None, metric: str) -> dict | None:
    """{"version", "variant", "value", "sets_hash"} of the alias holder from its model-version tags (as
    Tracker.champion() returns them); value None when the version carries no such metric."""
    if found is None:
        return None
    value = found["tags"].get(f"eval.{metric}")
    return {
        "version": found["version"],
        "variant": found.get("variant"),
        "value": float(value) if value not in (None, "") else None,
        "sets_hash": found["tags"].get(SETS_HASH_TAG),
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


def forgetting_warnings(results: list[dict], margin: float, metric: str = "perplexity/general_token") -> dict:
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
) -> dict:
    """The promotion decision for this evaluation.

    ``champion``: {"version", "variant", "value", "sets_hash"} of the current alias holder (value = its
    recorded primary metric, None when it has none) or None. ``versions``: {variant: registered model
    version} of the models just evaluated. The champion's number is only compared when it is comparable:
    re-measured in this run (its version is one of ``versions``), or recorded on the same eval sets
    (``sets_hash``); otherwise the best eligible candidate is promoted and the reasons say why.
    Returns {primary_metric, higher_is_better, candidate, version, promoted, gate, champion_before,
    eligible, reasons}; ``reasons`` says, in sentences, why it was or was not promoted.
    """
    champion = _comparable_champion(champion, results, versions, primary_metric, sets_hash)
    reasons: list[str] = []
    eligible = []
    for result in results:
        name = result["variant"]
        if name not in candidates:
            continue
        value = _value(result, primary_metric)
        failed = failed_guardrails(result)
        if value is None:
            reasons.append(f"{name} has no {primary_metric} value: not eligible")
        elif failed:
            reasons.append(f"{name} failed guardrails ({'; '.join(failed)}): not eligible")
        elif versions.get(name) is None:
            reasons.append(f"{name} has no registered model version: not eligible")
        else:
            eligible.append((value, name))
    decision = {
        "primary_metric": primary_metric,
        "higher_is_better": higher_is_better,
        "candidate": None,
        "version": None,
        "promoted": False,
        "gate": GATE_UNSAFE,
        "champion_before": champion,
        "eligible": [name for _, name in eligible],
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
    # Best on the metric; a tie goes to the variant listed first in ``candidates`` (not to a name's spelling).
    sign = 1 if higher_is_better else -1
    value, best = max(eligible, key=lambda item: (sign * item[0], -candidates.index(item[1])))
    decision.update(candidate=best, version=versions[best], gate=GATE_NOT_BETTER)
    shown = f"{best} ({primary_metric} = {value:.4f})"
    if champion is None:
        reasons.append(f"{shown} is the best eligible variant and there is no champion yet: promoted")
        return {**decision, "promoted": True, "gate": GATE_PASSED}
    if str(champion.get("version")) == str(versions[best]):
        reasons.append(f"{shown} is already the champion (version {champion['version']})")
        return decision
    if champion.get("value") is None:
        why = champion.get("not_comparable") or f"has no recorded {primary_metric}"
        reasons.append(
            f"{shown} is the best eligible variant; the champion (version {champion.get('version')}) {why}: "
            "promoted"
        )
        return {**decision, "promoted": True, "gate": GATE_PASSED}
    champ = float(champion["value"])
    if _beats(value, champ, higher_is_better, min_delta):
        reasons.append(
            f"{shown} beats the champion (version {champion.get('version')}, {champ:.4f}) by more than "
            f"{min_delta}: promoted"
        )
        return {**decision, "promoted": True, "gate": GATE_PASSED}
    reasons.append(
        f"{shown} does not beat the champion (version {champion.get('version')}, {champ:.4f}) by more than "
        f"{min_delta}: not promoted"
    )
    return decision


def _comparable_champion(champion, results, versions, metric, sets_hash) -> dict | None:
    """The champion with a value comparable to this run's, or value None and the reason it is not."""
    if champion is None:
        return None
    for result in results:
        if versions.get(result["variant"]) is not None and str(versions[result["variant"]]) == str(
            champion["version"]
        ):
            return {**champion, "value": _value(result, metric), "remeasured": True}
    if sets_hash and champion.get("sets_hash") and champion["sets_hash"] != sets_hash:
        return {
            **champion,
            "value": None,
            "not_comparable": "was measured on other eval sets (its number is not comparable)",
        }
    return champion

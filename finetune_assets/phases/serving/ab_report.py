"""The A/B report on live traffic: each served variant's approval, errors and latency, with intervals, and
every challenger compared with the reference variant (the champion: by default the one with most traffic).

- approval ("win rate" from feedback): the share of a variant's rated answers that got a thumbs up; a
  preferred answer without a rating counts as a thumbs down (the user wanted another answer); a response rated
  twice counts with its last rating. Wilson interval.
- error rate: the share of routed requests answered 5xx (a 4xx is the client's). Wilson interval.
- latency p50 / p95 / p99 of answered requests, bootstrap intervals.

A challenger against the reference: the difference in approval and in error rate (Newcombe interval,
two-proportion z test) and in p95 latency (bootstrap). ``blocking`` lists what makes a challenger
significantly worse (approval lower or errors higher at ``alpha``); latency is reported, not blocking,
since a larger variant may be slower by design. Only routed requests count: a client that names a variant
chose it, and would bias the split.
"""

import math

from finetune_assets.phases.evaluation import stats
from finetune_assets.phases.text.markdown import markdown_table

QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def _last_labels(feedback: list[dict]) -> dict[str, bool]:
    labels = {}
    for fb in sorted(feedback, key=lambda f: f["created"]):
        if fb.get("label") is not None:
            labels[fb["response_id"]] = bool(fb["label"])
        elif fb.get("preferred"):
            labels[fb["response_id"]] = False
    return labels


def _variant(rows: list[dict], labels: dict[str, bool], seed: int) -> dict:
    answered = [r for r in rows if r["status"] == 200]
    errors = sum(r["status"] >= 500 for r in rows)
    rated = [labels[r["id"]] for r in answered if r["id"] in labels]
    latencies = [r["latency_s"] for r in answered]
    return {
        "requests": len(rows),
        "answered": len(answered),
        "rated": len(rated),
        "thumbs_up": sum(rated),
        "errors": errors,
        "approval": stats.wilson_interval(sum(rated), len(rated)).as_dict(),
        "error_rate": stats.wilson_interval(errors, len(rows)).as_dict(),
        "latency_s": {
            k: stats.quantile_interval(latencies, q, seed=seed).as_dict() for k, q in QUANTILES.items()
        },
        "completion_tokens": sum(r.get("completion_tokens") or 0 for r in answered),
    }


def build(
    responses: list[dict],
    feedback: list[dict],
    reference: str | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """The report of ``responses`` and ``feedback`` (request_log rows); see the module docstring."""
    routed = [r for r in responses if r.get("routed")]
    by_variant: dict[str, list[dict]] = {}
    for row in routed:
        by_variant.setdefault(row["variant"], []).append(row)
    labels = _last_labels(feedback)
    variants = {name: _variant(rows, labels, seed) for name, rows in
                sorted(by_variant.items(), key=lambda kv: -len(kv[1]))}  # fmt: skip
    if reference is None:
        reference = next(iter(variants), None)
    elif variants and reference not in variants:
        raise ValueError(
            f"reference variant {reference!r} has no routed traffic (variants: {', '.join(variants)})"
        )
    comparisons = {}
    for name, v in variants.items():
        if name == reference:
            continue
        ref = variants[reference]
        approval = stats.two_proportions(v["thumbs_up"], v["rated"], ref["thumbs_up"], ref["rated"], alpha)
        errors = stats.two_proportions(v["errors"], v["requests"], ref["errors"], ref["requests"], alpha)
        latency = stats.bootstrap_diff_of_quantiles(
            [r["latency_s"] for r in by_variant[name] if r["status"] == 200],
            [r["latency_s"] for r in by_variant[reference] if r["status"] == 200], 0.95, alpha, seed=seed,
        )  # fmt: skip
        blocking = []
        if approval.significant and approval.diff < 0:
            blocking.append(
                f"approval {approval.diff:+.3f} [{approval.low:+.3f}, {approval.high:+.3f}], p={approval.p_value:.3g}"
            )
        if errors.significant and errors.diff > 0:
            blocking.append(
                f"error rate {errors.diff:+.3f} [{errors.low:+.3f}, {errors.high:+.3f}], p={errors.p_value:.3g}"
            )
        comparisons[name] = {"approval_diff": approval.as_dict(), "error_rate_diff": errors.as_dict(),
                             "latency_p95_diff_s": latency.as_dict(), "blocking": blocking}  # fmt: skip
    return {"reference": reference, "alpha": alpha, "requests": len(routed), "feedback": len(feedback),
            "variants": variants, "comparisons": comparisons,
            "blocked": sorted(n for n, c in comparisons.items() if c["blocking"])}  # fmt: skip


def _fmt(interval: dict, digits: int = 3) -> str:
    if interval["value"] is None or math.isnan(interval["value"]):
        return "–"
    return f"{interval['value']:.{digits}f} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"


def markdown(report: dict) -> str:
    """The report as Markdown: one row per variant, then each challenger against the reference."""
    if not report["variants"]:
        return "No routed traffic in the window."
    rows = [[name + (" (reference)" if name == report["reference"] else ""), str(v["requests"]), str(v["rated"]),
             _fmt(v["approval"]), _fmt(v["error_rate"]), *(_fmt(v["latency_s"][k], 2) for k in QUANTILES)]
            for name, v in report["variants"].items()]  # fmt: skip
    text = markdown_table(
        ["variant", "requests", "rated", "approval", "error rate", "p50 s", "p95 s", "p99 s"], rows
    )
    if report["comparisons"]:
        diffs = [[name, _diff(c["approval_diff"]), _diff(c["error_rate_diff"]), _diff(c["latency_p95_diff_s"]),
                  "; ".join(c["blocking"]) or "no"] for name, c in report["comparisons"].items()]  # fmt: skip
        text += f"\n\nAgainst {report['reference']} (95% intervals, p; significant at {report['alpha']}):\n\n"
        text += markdown_table(["challenger", "approval diff", "error rate diff", "p95 latency diff s",
                                "significantly worse"], diffs)  # fmt: skip
    return text


def _diff(d: dict) -> str:
    if d["diff"] is None or math.isnan(d["diff"]):
        return "– (no data)"
    mark = " *" if d["significant"] else ""
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] p={d['p_value']:.3g}{mark}"

"""Per-item outcomes of one variant, their intervals, and paired differences between variants.

``item_outcomes`` turns the per-item rows ``evaluate_variant`` already has (glossary verdicts, lm-eval
samples, tool-use rows, guardrail rows) into {metric: {item id: value}}; the mean of each dict is the metric
itself. Because every variant is scored on the same items (same ids), two variants are compared item by item:
``paired_differences`` gives every variant vs the base (and vs the re-measured champion) per metric.

Pure Python (stats.py does the numbers); no dagster, no torch.
"""

from finetune_assets.phases.evaluation import stats

MC_TASK, QA_TASK = "fa_domain_mc", "fa_domain_qa"

REFERENCE = "base"


def _keyed(pairs) -> dict[str, float]:
    """{id: value} from (id, value) pairs, skipping None values; a missing or repeated id gets "#<position>"
    appended so no item silently replaces another."""
    out: dict[str, float] = {}
    for position, (item_id, value) in enumerate(pairs):
        if value is None:
            continue
        key = str(item_id) if item_id not in (None, "") else f"#{position}"
        if key in out:
            key = f"{key}#{position}"
        out[key] = float(value)
    return out


def _sample_id(sample: dict) -> str | None:
    doc = sample.get("doc") or {}
    return doc.get("id") if doc.get("id") not in (None, "") else f"doc{sample.get('doc_id')}"


def _sample_values(samples: list[dict], metric: str) -> dict[str, float]:
    return _keyed((_sample_id(s), s.get(metric)) for s in samples or [])


def item_outcomes(
    *,
    per_term: list[dict] = (),
    lm_samples: dict | None = None,
    tool_rows: list[dict] = (),
    guard_rows: dict | None = None,
) -> dict[str, dict[str, float]]:
    """{flat metric name: {item id: value}} for every metric measured item by item (empty ones left out).

    ``per_term``: hallucination_index rows {id, correct, llm_correct?}; ``lm_samples``: lm-eval's logged
    samples {task: [{doc, acc, ...}]}; ``tool_rows``: tool_use_accuracy rows; ``guard_rows``: run_guardrails'
    ``rows`` ({"redteam", "canaries", "bias"})."""
    lm_samples, guard_rows = lm_samples or {}, guard_rows or {}
    redteam = guard_rows.get("redteam") or []
    items = {
        "hallucination/index": _keyed((r.get("id"), bool(r["correct"])) for r in per_term),
        "hallucination/llm_index": _keyed((r.get("id"), r.get("llm_correct")) for r in per_term),
        "fa_domain_mc/acc": _sample_values(lm_samples.get(MC_TASK), "acc"),
        "fa_domain_mc/acc_norm": _sample_values(lm_samples.get(MC_TASK), "acc_norm"),
        "fa_domain_qa/rougeL": _sample_values(lm_samples.get(QA_TASK), "rougeL"),
        "tool_use/accuracy": _keyed((r["id"], bool(r["correct"])) for r in tool_rows),
        "tool_use/call_rate": _keyed((r["id"], bool(r["called_python_eval"])) for r in tool_rows),
        "guardrails/refusal_rate": _keyed(
            (r["id"], bool(r["refused"])) for r in redteam if r["expect"] == "refuse"
        ),
        "guardrails/over_refusal_rate": _keyed(
            (r["id"], bool(r["refused"])) for r in redteam if r["expect"] == "comply"
        ),
        "guardrails/leakage_rate": _keyed(
            (r["id"], bool(r["leaked"])) for r in guard_rows.get("canaries") or []
        ),
        "guardrails/bias_rate": _keyed(
            (f"t{r['template_index']}/{r['attribute']}", bool(r["biased"]))
            for r in guard_rows.get("bias") or []
        ),
    }
    return {metric: values for metric, values in items.items() if values}


def intervals(
    items: dict[str, dict[str, float]], confidence: float = 0.95, n_resamples: int = stats.DEFAULT_RESAMPLES
) -> dict[str, dict]:
    """{metric: Interval.as_dict()}: Wilson for 0/1 items, a seeded bootstrap of the mean otherwise."""
    return {
        metric: stats.interval(list(values.values()), confidence, n_resamples).as_dict()
        for metric, values in items.items()
    }


def paired(
    a: dict[str, float], b: dict[str, float], alpha: float, n_resamples: int = stats.DEFAULT_RESAMPLES
) -> stats.PairedDiff:
    """mean(a) - mean(b) on the item ids both have (sorted, so the result does not depend on dict order)."""
    shared = sorted(set(a) & set(b))
    return stats.compare_paired([a[i] for i in shared], [b[i] for i in shared], alpha, n_resamples)


def compare_results(
    result: dict, reference: dict, metric: str, alpha: float, n_resamples: int = stats.DEFAULT_RESAMPLES
) -> stats.PairedDiff | None:
    """Paired difference of ``metric`` between two evaluated variants, None when either lacks its items."""
    a = (result.get("items") or {}).get(metric)
    b = (reference.get("items") or {}).get(metric)
    if not a or not b or not set(a) & set(b):
        return None
    return paired(a, b, alpha, n_resamples)


def paired_differences(
    results: list[dict],
    *,
    alpha: float,
    champion_variant: str | None = None,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
) -> list[dict]:
    """Every variant vs the base (and vs ``champion_variant``, the champion re-measured in this run) on
    every metric both have items for: [{variant, reference, metric, diff, low, high, p_value, n, method,
    significant, confidence}], variant - reference."""
    by_name = {r["variant"]: r for r in results}
    references = [name for name in dict.fromkeys([REFERENCE, champion_variant]) if name in by_name]
    rows = []
    for ref_name in references:
        reference = by_name[ref_name]
        for result in results:
            if result["variant"] == ref_name:
                continue
            for metric in result.get("items") or {}:
                diff = compare_results(result, reference, metric, alpha, n_resamples)
                if diff is not None:
                    rows.append(
                        {
                            "variant": result["variant"],
                            "reference": ref_name,
                            "metric": metric,
                            **diff.as_dict(),
                        }
                    )
    return rows


def describe(diff: stats.PairedDiff | dict, reference: str) -> str:
    """'+0.062 [0.031, 0.094] over base, p=0.0004, significant'."""
    d = diff.as_dict() if isinstance(diff, stats.PairedDiff) else diff
    verdict = "significant" if d["significant"] else "not significant"
    return (
        f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] over {reference} "
        f"(n={d['n']}, p={format_p(d['p_value'])}, {d['method']}): {verdict}"
    )


def format_p(p: float) -> str:
    """0.0123 -> "0.0123"; below 1e-4 in scientific notation ("2.1e-09"), never a misleading "0.0000"."""
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"

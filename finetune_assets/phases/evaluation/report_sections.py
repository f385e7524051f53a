"""The sections of the evaluation report, each a list of blocks (phases.evaluation.render): promotion decision,
comparison table, paired differences, guardrails, warnings, human review, judge calibration, and examples per
variant. Values carry their 95% intervals; a difference is called significant only by its paired test."""

from pathlib import Path

from finetune_assets import io
from finetune_assets.phases.evaluation import compare
from finetune_assets.phases.evaluation.lm_eval_tasks import GENERAL_PPL, HELDOUT_PPL
from finetune_assets.phases.evaluation.render import (
    VARIANT_ORDER,
    Block,
    Cell,
    as_number,
    format_value,
    in_variant_order,
)

# (flat metric name, column label, higher is better)
KEY_METRICS: list[tuple[str, str, bool]] = [
    ("fa_domain_mc/acc", "Domain MC acc", True),
    ("fa_domain_qa/rougeL", "Domain QA ROUGE-L", True),
    ("hallucination/index", "Glossary correct (halluc. index)", True),
    ("hallucination/llm_index", "Glossary correct (judge model)", True),
    (HELDOUT_PPL, "Held-out PPL (word)", False),
    (GENERAL_PPL, "General-text PPL (word)", False),
    ("tool_use/accuracy", "Tool-use acc", True),
    ("guardrails/leakage_rate", "Leakage rate", False),
    ("guardrails/refusal_rate", "Refusal rate", True),
    ("guardrails/bias_rate", "Bias rate", False),
    ("generation/decode_tokens_per_s_fixed", "Decode tokens/s (fixed length)", True),
    ("generation/tokens_per_s", "Answer tokens/s (depends on answer length)", True),
    ("generation/latency_s", "Latency per answer (s)", False),
]

GUARDRAIL_LABELS = {
    "leakage": "Leakage",
    "refusal": "Refusal",
    "over_refusal": "Over-refusal",
    "bias": "Bias",
}

CALIBRATION_ROWS = [
    ("self_accept_rate", "reference judged correct against itself"),
    ("truncated_accept_rate", "first {truncate_words} words of the reference judged correct"),
    ("other_reject_rate", "another term's definition judged wrong"),
    ("pairs_embed_false_accept_rate", "all wrong pairs over the embedding threshold"),
    ("other_rouge_mean", "ROUGE-L of wrong pairs, mean"),
    ("other_rouge_max", "ROUGE-L of wrong pairs, max"),
    ("other_similarity_mean", "cosine of wrong pairs, mean"),
    ("other_similarity_max", "cosine of wrong pairs, max"),
    ("truncated_similarity_mean", "cosine of truncated references, mean"),
]


def _with_interval(value, iv: dict | None) -> str:
    """ "0.231 [0.185, 0.283]" when an interval is known, else the value alone."""
    if not iv or as_number(iv.get("low")) is None or as_number(iv.get("high")) is None:
        return format_value(value)
    return f"{format_value(value)} [{format_value(iv['low'])}, {format_value(iv['high'])}]"


def _definition_examples(result: dict, n: int) -> list[dict]:
    path = (result.get("files") or {}).get("definitions")
    if not path or not Path(path).is_file():
        return []
    return io.read_jsonl(Path(path))[:n]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(metric: str) -> str:
    return next((label for key, label, _ in KEY_METRICS if key == metric), metric)


def promotion_blocks(promotion: dict, results: list[dict]) -> list[Block]:
    metric = promotion.get("primary_metric") or "?"
    higher = promotion.get("higher_is_better", True)
    candidate = promotion.get("candidate")
    before = promotion.get("champion_before") or None
    reasons = [str(r) for r in promotion.get("reasons") or []]
    by_variant = {r["variant"]: r for r in results}

    def champion_text(champ: dict) -> str:
        return f"`{champ.get('variant') or '?'}` (version {champ.get('version') or '?'})"

    already = bool(
        not promotion.get("promoted")
        and candidate
        and before
        and promotion.get("version") is not None
        and str(before.get("version")) == str(promotion.get("version"))
    )
    if already:
        status, css = (
            f"**No change: `{candidate}` (version {before.get('version')}) is already the `champion`**.",
            "refused",
        )
    elif promotion.get("promoted") and candidate:
        version = promotion.get("version")
        status = f"**Approved for promotion: `{candidate}` becomes the `champion`**" + (
            f" (registered model version {version}; the champion asset moves the alias)." if version else "."
        )
        css = "promoted"
    else:
        who = f"candidate `{candidate}` did not become `champion`" if candidate else "no candidate variant"
        stays = f"the champion stays {champion_text(before)}" if before else "there is no champion yet"
        status, css = f"**No promotion: {who}**; {stays}.", "refused"
    blocks: list[Block] = [("h", 2, "Promotion"), ("p", status, css)]
    facts = [f"Primary metric: `{metric}` ({_label(metric)}, {'higher' if higher else 'lower'} is better)."]
    if candidate:
        chosen = by_variant.get(candidate) or {}
        value = chosen.get("metrics", {}).get(metric)
        facts.append(
            f"Candidate `{candidate}`: {_with_interval(value, (chosen.get('intervals') or {}).get(metric))}."
        )
    if before:
        facts.append(
            f"{'Previous' if promotion.get('promoted') else 'Current'} champion {champion_text(before)}: "
            f"{format_value(before.get('value'))}."
        )
    else:
        facts.append("Champion before this run: none.")
    if isinstance(promotion.get("eligible"), list):
        facts.append("Eligible candidates: " + (", ".join(promotion["eligible"]) or "none") + ".")
    blocks.append(("ul", facts))
    blocks.append(("p", "**Why:**" if promotion.get("promoted") else "**Why not:**"))
    blocks.append(("ul", reasons or ["(no reason given)"]))
    return blocks


def comparison_blocks(
    table: list[dict], metrics: list[tuple[str, str, bool]], plot: Path, results: list[dict]
) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Comparison")]
    if not metrics:
        return blocks + [("p", "No key metric was measured for any variant.")]
    header = ["Variant"] + [f"{label} {'↑' if higher else '↓'}" for _, label, higher in metrics]
    intervals = {r["variant"]: r.get("intervals") or {} for r in results}
    rows = [
        [Cell(row["variant"])]
        + [Cell(_with_interval(row[key], intervals[row["variant"]].get(key))) for key, _, _ in metrics]
        for row in table
    ]
    note = (
        "Glossary correct = share of glossary terms the model defined correctly (ROUGE-L or embedding judge; "
        "1 - hallucination rate; the judge-model column when a judge endpoint is configured). Perplexities "
        "are on held-out documents never used for training; general-text PPL watches for forgetting. Both are"
        " lm-eval's rolling loglikelihood per whitespace word, so they compare across tokenizers too. "
        "Guardrail rates are detailed below. [low, high] = confidence interval over the items (Wilson for "
        "rates, bootstrap for means); overlapping intervals do not settle a comparison: see the paired "
        "differences below. Decode tokens/s times the same prompts for the same fixed number of new tokens on"
        " every variant; answer tokens/s divides the answers' tokens by the wall time, and a batch runs until"
        " its longest answer is done, so it moves with answer length, not speed."
    )
    return blocks + [("table", header, rows), ("p", note), ("img", plot, "Key metrics per variant")]


def difference_blocks(differences: list[dict], alpha: float) -> list[Block]:
    """variant - reference per metric, paired on the items both were scored on."""
    blocks: list[Block] = [("h", 2, "Differences to the base")]
    if not differences:
        return blocks + [("p", "No paired comparison (no base, or no per-item outcomes).")]
    header = ["Variant", "vs", "Metric", "Diff", f"{1 - alpha:.0%} interval", "p", "n", "Test", "Verdict"]
    rank = {name: i for i, name in enumerate(VARIANT_ORDER)}
    position = {key: i for i, (key, _, _) in enumerate(KEY_METRICS)}  # the comparison table's order

    def sort_key(d: dict) -> tuple:
        return (
            d["reference"] != "base",
            rank.get(d["variant"], 9),
            position.get(d["metric"], 99),
            d["metric"],
        )

    order = sorted(differences, key=sort_key)
    rows = [
        [
            Cell(d["variant"]),
            Cell(d["reference"]),
            Cell(_label(d["metric"])),
            Cell(f"{d['diff']:+.3f}"),
            Cell(f"[{d['low']:+.3f}, {d['high']:+.3f}]"),
            Cell(compare.format_p(d["p_value"])),
            Cell(str(d["n"])),
            Cell(d["method"]),
            Cell("significant" if d["significant"] else "not significant",
                 status="significant" if d["significant"] else None),
        ]
        for d in order
    ]  # fmt: skip
    note = (
        "Diff = variant minus reference on the items both were scored on (the direction that is better is the "
        "column's arrow above). Right/wrong items: exact McNemar p with a paired bootstrap interval; scores: "
        f"paired bootstrap. Significant = p < {alpha} and the interval excludes 0; not significant means the "
        "difference is within what item sampling alone produces."
    )
    return blocks + [("table", header, rows), ("p", note)]


def guardrail_blocks(results: list[dict]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Guardrails")]
    names: list[str] = [n for n in GUARDRAIL_LABELS if any(n in (r.get("guardrails") or {}) for r in results)]
    for r in results:
        names += [n for n in (r.get("guardrails") or {}) if n not in names]
    if not names:
        return blocks + [("p", "No guardrail was evaluated.")]
    header = ["Variant"] + [GUARDRAIL_LABELS.get(n, n) for n in names] + ["All"]
    rows = []
    for result in in_variant_order(results):
        guards = result.get("guardrails") or {}
        cells, statuses = [Cell(result["variant"])], []
        for name in names:
            g = guards.get(name)
            if not isinstance(g, dict):
                cells.append(Cell("-"))
                statuses.append(None)
                continue
            passed = g.get("passed")
            status = None if passed is None else ("pass" if passed else "fail")
            word = {"pass": "PASS", "fail": "FAIL", None: "n/a"}[status]
            cells.append(
                Cell(
                    f"{format_value(g.get('value'))} ({g.get('op', '')} {format_value(g.get('threshold'))}) {word}",
                    status=status,
                )
            )
            statuses.append(status)
        overall = (
            "fail"
            if "fail" in statuses
            else ("pass" if statuses and all(s == "pass" for s in statuses) else None)
        )
        cells.append(Cell({"pass": "PASS", "fail": "FAIL", None: "n/a"}[overall], status=overall))
        rows.append(cells)
    note = (
        "Each cell: measured rate (threshold) and PASS/FAIL. Leakage = planted canaries reproduced; refusal = "
        "harmful prompts refused; over-refusal = benign prompts refused; bias = biased completions. A variant "
        "must pass every guardrail to be promoted."
    )
    return blocks + [("table", header, rows), ("p", note)]


def warning_blocks(results: list[dict]) -> list[Block]:
    items = [f"**{r['variant']}**: {w}" for r in in_variant_order(results) for w in r.get("warnings") or []]
    return [("h", 2, "Warnings"), ("ul", items) if items else ("p", "No warnings.")]


def _numeric_items(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if as_number(v) is not None}


def _stat_rows(label: str, stats) -> list[tuple[str, str, dict]]:
    """(label, group, numeric values): one row for a block of numbers, or, for a block of blocks (e.g. one per
    kind of review item), one row per sub-block; anything nested deeper (a confusion matrix) is left out."""
    if not isinstance(stats, dict):
        return []
    if _numeric_items(stats):
        return [(label, "", _numeric_items(stats))]
    return [
        (label, str(k), _numeric_items(v))
        for k, v in stats.items()
        if isinstance(v, dict) and _numeric_items(v)
    ]


def review_blocks(review: dict) -> list[Block]:
    """Render any agreement dict: {"variants": {variant: {stat: number} or {group: {stat: number}}},
    other blocks of the same shape (overall, per kind ...) after the variants, scalars and lists as bullets."""
    blocks: list[Block] = [("h", 2, "Human review")]
    variants = review.get("variants")
    if not isinstance(variants, dict):
        variants = {k: v for k, v in review.items() if isinstance(v, dict)}
    facts = [f"labels: `{review['source']}`"] if review.get("source") else []
    for key, value in review.items():
        if key in ("source", "variants") or isinstance(value, dict):
            continue
        if isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) or "-"
        facts.append(f"{key}: {format_value(value) if as_number(value) is not None else value}")
    if facts:
        blocks.append(("ul", facts))
    rank = {name: i for i, name in enumerate(VARIANT_ORDER)}
    order = sorted(variants, key=lambda v: (rank.get(v, len(rank)), list(variants).index(v)))
    rows = [row for v in order for row in _stat_rows(v, variants[v])]
    if variants is review.get("variants"):
        rows += [row for k, v in review.items() if k != "variants" for row in _stat_rows(k, v)]
    columns: list[str] = []
    for _, _, values in rows:
        columns += [k for k in values if k not in columns]
    if not columns:
        return blocks + [("p", "No human labels yet.")]
    grouped = any(group for _, group, _ in rows)
    header = ["Variant", *(["Kind"] if grouped else []), *columns]
    table = [
        [
            Cell(label),
            *([Cell(group or "all")] if grouped else []),
            *(Cell(format_value(values.get(c))) for c in columns),
        ]
        for label, group, values in rows
    ]
    note = (
        "Human labels on the exported review sample against the automatic judge (agreement = share of answers "
        "where both agree; Cohen's kappa: 1 = perfect, 0 = chance)."
    )
    return blocks + [("table", header, table), ("p", note)]


def calibration_blocks(results: list[dict]) -> list[Block]:
    calibration = next((r.get("calibration") for r in results if r.get("calibration")), None)
    blocks: list[Block] = [("h", 2, "Judge calibration")]
    if not (calibration and calibration.get("self_accept_rate") is not None):
        return blocks + [("p", "No calibration (fewer than two glossary terms).")]
    judge = f"ROUGE-L F1 >= {calibration['rouge_threshold']}"
    if calibration.get("embedder"):
        judge += f" OR cosine (all-MiniLM-L6-v2) >= {calibration['embed_threshold']}"
    rows = [
        [desc.format(truncate_words=calibration.get("truncate_words")), format_value(calibration.get(key))]
        for key, desc in CALIBRATION_ROWS
        if calibration.get(key) is not None
    ]
    blocks += [
        ("p", f"Judge: {judge}; {calibration['n_terms']} glossary terms."),
        ("table", ["Check", "Value"], rows),
    ]
    fit = calibration.get("fit")
    if fit:
        blocks += [
            (
                "p",
                f"Thresholds fitted on {fit['n_fit_terms']} terms (best balanced accuracy over known-correct "
                "answers: reference truncations and module-page paraphrases, vs known-wrong: a random and the "
                "most similar other term's definition; "
                f"{format_value(fit['fit_balanced_accuracy'])} there), then measured on the other "
                f"{fit['n_check_terms']} terms:",
            ),
            (
                "table",
                ["Held-out check", "Agreement with the known label"],
                [
                    ["known-correct judged correct", format_value(fit["check_accept_correct"])],
                    ["known-wrong judged wrong", format_value(fit["check_reject_wrong"])],
                    ["balanced accuracy", format_value(fit["check_balanced_accuracy"])],
                ],
            ),
        ]
    return blocks


def variant_blocks(results: list[dict]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Variants")]
    for result in in_variant_order(results):
        blocks.append(("h", 3, result["variant"]))
        facts = [f"model: `{result.get('model_dir')}`"]
        if result.get("adapter_dir"):
            facts.append(f"adapter: `{result['adapter_dir']}`")
        if result.get("counts"):
            facts.append("eval items: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
        blocks.append(("ul", facts))
        metric_rows = [[name, format_value(value)] for name, value in sorted(result["metrics"].items())]
        blocks.append(("table", ["Metric", "Value"], metric_rows))
        examples = _definition_examples(result, 3)
        if examples:
            ex_rows = [
                [
                    _cell(e["term"], 40),
                    _cell(e["generated"]),
                    format_value(e.get("rouge_l")),
                    format_value(e.get("similarity")),
                    "yes" if e.get("correct") else "no",
                ]
                for e in examples
            ]
            blocks += [
                ("p", "Sample definitions:"),
                ("table", ["Term", "Generated", "ROUGE-L", "Cosine", "Correct"], ex_rows),
            ]
    return blocks

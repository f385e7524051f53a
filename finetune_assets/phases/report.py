"""Comparison report over evaluated variants (results of ``phases.evaluate.evaluate_variant``).

``write_report`` writes, atomically, into ``out_dir``:
- ``report.md``: the promotion decision first (when given: which variant became ``champion``, or why none
  did), then one row per variant (base, inst, dpo, tr first) x key metrics, each value with its confidence
  interval where the metric was measured item by item (a key metric no variant has is left out; no "best"
  marking: a point difference inside the noise is not a win); the differences to the base (paired on the
  same items: diff, interval, p, significant or not); guardrails (value, threshold, PASS/FAIL) and warnings
  (forgetting, ...); training curves; human-review agreement; the judge calibration; per-variant details;
- ``report.html``: the same sections as one self-contained page (plots embedded as base64 PNG, no external
  files), FAIL cells red;
- ``metrics.csv``: one row per variant, every flat metric as a column (key metrics first);
- ``comparison.png``: one bar subplot per key metric (each with its own scale), one bar per variant;
- ``loss_curves.png`` (only when ``loss_curves`` has points): one subplot per metric, one line per variant;
- ``summary.json``: the table, key metrics, guardrails, warnings, promotion and review as JSON.
matplotlib is used through its object API with the Agg canvas: no global backend switch, no display needed.
Both documents are rendered from one list of blocks (heading, paragraph, bullets, table, image), so the
Markdown and the HTML always hold the same sections.
"""

import base64
import csv
import html
import math
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from finetune_assets import io
from finetune_assets.phases import compare

# (flat metric name, column label, higher is better)
KEY_METRICS: list[tuple[str, str, bool]] = [
    ("fa_domain_mc/acc", "Domain MC acc", True),
    ("fa_domain_qa/rougeL", "Domain QA ROUGE-L", True),
    ("hallucination/index", "Glossary correct (halluc. index)", True),
    ("hallucination/llm_index", "Glossary correct (judge model)", True),
    ("perplexity/token", "Held-out PPL (token)", False),
    ("perplexity/general_token", "General-text PPL (token)", False),
    ("tool_use/accuracy", "Tool-use acc", True),
    ("guardrails/leakage_rate", "Leakage rate", False),
    ("guardrails/refusal_rate", "Refusal rate", True),
    ("guardrails/bias_rate", "Bias rate", False),
    ("generation/decode_tokens_per_s_fixed", "Decode tokens/s (fixed length)", True),
    ("generation/tokens_per_s", "Answer tokens/s (depends on answer length)", True),
    ("generation/latency_s", "Latency per answer (s)", False),
]
VARIANT_ORDER = ["base", "inst", "dpo", "tr"]
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
HTML_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1250px;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
td.significant { background: #e6f2e6; }
td.pass { color: #176017; }
td.fail { background: #f8d3d3; color: #8f0000; font-weight: bold; }
p.promoted { border-left: 6px solid #2e8b2e; background: #eef8ee; padding: .5rem .8rem; }
p.refused { border-left: 6px solid #b8860b; background: #fdf6e3; padding: .5rem .8rem; }
code { background: #f3f4f6; padding: 0 .2rem; border-radius: 3px; }
figure { margin: .5rem 0 1rem; }
img { max-width: 100%; }
""".strip()


@dataclass(frozen=True)
class Cell:
    """A table cell: its text and a status that colours it in HTML."""

    text: str
    status: str | None = None  # "pass" | "fail" | "significant" | None


# A block is one of: ("h", level, text) | ("p", text[, css class]) | ("ul", [text]) |
# ("table", header, rows) | ("img", path, alt). Paragraph and bullet text may use **bold** and `code`.
Block = tuple


def _ordered(results: list[dict]) -> list[dict]:
    rank = {name: i for i, name in enumerate(VARIANT_ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["variant"], len(rank)), results.index(r)))


def _num(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = _num(value)
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def _with_interval(value, iv: dict | None) -> str:
    """ "0.231 [0.185, 0.283]" when an interval is known, else the value alone."""
    if not iv or _num(iv.get("low")) is None or _num(iv.get("high")) is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(iv['low'])}, {_fmt(iv['high'])}]"


def present_metrics(results: list[dict]) -> list[tuple[str, str, bool]]:
    """The KEY_METRICS at least one variant has a finite value for (the others would be all "-")."""
    return [
        entry
        for entry in KEY_METRICS
        if any(_num((r.get("metrics") or {}).get(entry[0])) is not None for r in results)
    ]


def build_table(results: list[dict]) -> list[dict]:
    """One row per variant: {"variant": name, <flat metric>: value or None for each present key metric}."""
    keys = [key for key, _, _ in present_metrics(results)]
    return [
        {"variant": r["variant"], **{key: _num(r["metrics"].get(key)) for key in keys}}
        for r in _ordered(results)
    ]


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


# ----------------------------------------------------------------------------------------------- sections


def _promotion_blocks(promotion: dict, results: list[dict]) -> list[Block]:
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
            f"{_fmt(before.get('value'))}."
        )
    else:
        facts.append("Champion before this run: none.")
    if isinstance(promotion.get("eligible"), list):
        facts.append("Eligible candidates: " + (", ".join(promotion["eligible"]) or "none") + ".")
    blocks.append(("ul", facts))
    blocks.append(("p", "**Why:**" if promotion.get("promoted") else "**Why not:**"))
    blocks.append(("ul", reasons or ["(no reason given)"]))
    return blocks


def _comparison_blocks(
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
        "1 - hallucination rate; the judge-model column when a judge endpoint is configured). Perplexities are "
        "on held-out documents never used for training; general-text PPL watches for forgetting. Token PPL "
        "depends on the tokenizer, so compare it across variants of one base model only. Guardrail rates are "
        "detailed below. [low, high] = confidence interval over the items (Wilson for rates, bootstrap for "
        "means); overlapping intervals do not settle a comparison: see the paired differences below. Decode "
        "tokens/s times the same prompts for the same fixed number of new tokens on every variant; answer "
        "tokens/s divides the answers' tokens by the wall time, and a batch runs until its longest answer is "
        "done, so it moves with answer length, not speed."
    )
    return blocks + [("table", header, rows), ("p", note), ("img", plot, "Key metrics per variant")]


def _difference_blocks(differences: list[dict], alpha: float) -> list[Block]:
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


def _guardrail_blocks(results: list[dict]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Guardrails")]
    names: list[str] = [n for n in GUARDRAIL_LABELS if any(n in (r.get("guardrails") or {}) for r in results)]
    for r in results:
        names += [n for n in (r.get("guardrails") or {}) if n not in names]
    if not names:
        return blocks + [("p", "No guardrail was evaluated.")]
    header = ["Variant"] + [GUARDRAIL_LABELS.get(n, n) for n in names] + ["All"]
    rows = []
    for result in _ordered(results):
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
                    f"{_fmt(g.get('value'))} ({g.get('op', '')} {_fmt(g.get('threshold'))}) {word}",
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


def _warning_blocks(results: list[dict]) -> list[Block]:
    items = [f"**{r['variant']}**: {w}" for r in _ordered(results) for w in r.get("warnings") or []]
    return [("h", 2, "Warnings"), ("ul", items) if items else ("p", "No warnings.")]


def _numeric_items(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if _num(v) is not None}


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


def _review_blocks(review: dict) -> list[Block]:
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
        facts.append(f"{key}: {_fmt(value) if _num(value) is not None else value}")
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
            *(Cell(_fmt(values.get(c))) for c in columns),
        ]
        for label, group, values in rows
    ]
    note = (
        "Human labels on the exported review sample against the automatic judge (agreement = share of answers "
        "where both agree; Cohen's kappa: 1 = perfect, 0 = chance)."
    )
    return blocks + [("table", header, table), ("p", note)]


def _calibration_blocks(results: list[dict]) -> list[Block]:
    calibration = next((r.get("calibration") for r in results if r.get("calibration")), None)
    blocks: list[Block] = [("h", 2, "Judge calibration")]
    if not (calibration and calibration.get("self_accept_rate") is not None):
        return blocks + [("p", "No calibration (fewer than two glossary terms).")]
    judge = f"ROUGE-L F1 >= {calibration['rouge_threshold']}"
    if calibration.get("embedder"):
        judge += f" OR cosine (all-MiniLM-L6-v2) >= {calibration['embed_threshold']}"
    rows = [
        [desc.format(truncate_words=calibration.get("truncate_words")), _fmt(calibration.get(key))]
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
                f"{_fmt(fit['fit_balanced_accuracy'])} there), then measured on the other "
                f"{fit['n_check_terms']} terms:",
            ),
            (
                "table",
                ["Held-out check", "Agreement with the known label"],
                [
                    ["known-correct judged correct", _fmt(fit["check_accept_correct"])],
                    ["known-wrong judged wrong", _fmt(fit["check_reject_wrong"])],
                    ["balanced accuracy", _fmt(fit["check_balanced_accuracy"])],
                ],
            ),
        ]
    return blocks


def _variant_blocks(results: list[dict]) -> list[Block]:
    blocks: list[Block] = [("h", 2, "Variants")]
    for result in _ordered(results):
        blocks.append(("h", 3, result["variant"]))
        facts = [f"model: `{result.get('model_dir')}`"]
        if result.get("adapter_dir"):
            facts.append(f"adapter: `{result['adapter_dir']}`")
        if result.get("counts"):
            facts.append("eval items: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
        blocks.append(("ul", facts))
        metric_rows = [[name, _fmt(value)] for name, value in sorted(result["metrics"].items())]
        blocks.append(("table", ["Metric", "Value"], metric_rows))
        examples = _definition_examples(result, 3)
        if examples:
            ex_rows = [
                [
                    _cell(e["term"], 40),
                    _cell(e["generated"]),
                    _fmt(e.get("rouge_l")),
                    _fmt(e.get("similarity")),
                    "yes" if e.get("correct") else "no",
                ]
                for e in examples
            ]
            blocks += [
                ("p", "Sample definitions:"),
                ("table", ["Term", "Generated", "ROUGE-L", "Cosine", "Correct"], ex_rows),
            ]
    return blocks


def build_blocks(
    results: list[dict],
    table: list[dict],
    *,
    title: str,
    plot: Path,
    extra: dict | None = None,
    promotion: dict | None = None,
    loss_plot: Path | None = None,
    review: dict | None = None,
    differences: list[dict] | None = None,
    alpha: float = 0.05,
) -> list[Block]:
    """Every section of the report, in order, as renderer-neutral blocks."""
    blocks: list[Block] = [("h", 1, title)]
    if promotion:
        blocks += _promotion_blocks(promotion, results)
    if extra:
        if promotion:
            blocks.append(("h", 2, "Run"))
        blocks.append(("ul", [f"**{k}**: {v}" for k, v in extra.items()]))
    blocks += _comparison_blocks(table, present_metrics(results), plot, results)
    if differences is not None:
        blocks += _difference_blocks(differences, alpha)
    blocks += _guardrail_blocks(results)
    blocks += _warning_blocks(results)
    if loss_plot is not None:
        blocks += [
            ("h", 2, "Training curves"),
            ("p", "Per-step metrics of each variant's training run (one subplot per metric)."),
            ("img", loss_plot, "Training curves per variant"),
        ]
    if review:
        blocks += _review_blocks(review)
    blocks += _calibration_blocks(results)
    blocks += _variant_blocks(results)
    return blocks


# ----------------------------------------------------------------------------------------------- renderers


def _as_cell(value) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(header: list[str], rows: list[list]) -> str:
    def md(cell) -> str:
        return _md_escape(_as_cell(cell).text)

    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(blocks: list[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            parts += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            parts += [block[1], ""]
        elif kind == "ul":
            parts += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            parts += [_markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            parts += [f"![{block[2]}]({Path(block[1]).name})", ""]
    return "\n".join(parts).rstrip() + "\n"


def _inline_html(text: str) -> str:
    """Escape, then turn the two inline marks the report uses (**bold**, `code`) into tags."""
    out = html.escape(str(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _html_table(header: list[str], rows: list[list]) -> str:
    def td(cell) -> str:
        cell = _as_cell(cell)
        attr = f' class="{cell.status}"' if cell.status else ""
        return f"<td{attr}>{html.escape(cell.text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def render_html(blocks: list[Block], title: str) -> str:
    """A self-contained page: inline CSS, images embedded as base64 data URIs."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            css = f' class="{block[2]}"' if len(block) > 2 and block[2] else ""
            body.append(f"<p{css}>{_inline_html(block[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            body.append(_html_table(block[1], block[2]))
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            alt = html.escape(block[2])
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{HTML_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ----------------------------------------------------------------------------------------------- files


def _csv_text(results: list[dict]) -> str:
    keys = [key for key, _, _ in present_metrics(results)]
    others = sorted({k for r in results for k in r["metrics"]} - set(keys))
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", *keys, *others])
    for r in _ordered(results):
        writer.writerow(
            [
                r["variant"],
                *("" if _num(r["metrics"].get(k)) is None else r["metrics"][k] for k in keys + others),
            ]
        )
    return buf.getvalue()


def _new_figure(n_panels: int, ncols: int, width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, nrows, ncols


def _colors(variants: list[str]) -> dict[str, str]:
    return {v: f"C{i}" for i, v in enumerate(variants)}


def _write_png(table: list[dict], metrics: list[tuple[str, str, bool]], path: Path, title: str) -> Path:
    """One subplot per present key metric (own y scale), one bar per variant; written atomically."""
    variants = [row["variant"] for row in table]
    colors = _colors(variants)
    fig, nrows, ncols = _new_figure(len(metrics), 3, 4.2, 3.2)
    if not metrics:
        fig.text(0.5, 0.5, "no key metric measured", ha="center", va="center")
    for i, (key, label, higher) in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [row[key] for row in table]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(variants, heights, color=[colors[v] for v in variants])
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                _fmt(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.margins(y=0.15)
        ax.tick_params(labelsize=8)
    fig.suptitle(title)
    return io.write_figure(fig, path, dpi=110)


def _curve_points(points) -> list[tuple[int, float]]:
    out = []
    for point in points or []:
        step, value = (point[0], point[1]) if isinstance(point, list | tuple) else (len(out) + 1, point)
        if _num(value) is not None and _num(step) is not None:
            out.append((int(step), float(value)))
    return sorted(out)


def _write_loss_png(curves: dict, variants: list[str], path: Path, title: str) -> Path | None:
    """One subplot per metric name, one line per variant; None (nothing written) when there are no points."""
    from matplotlib.ticker import MaxNLocator

    series = {v: {m: _curve_points(p) for m, p in (curves.get(v) or {}).items()} for v in variants}
    names: list[str] = []
    for per_metric in series.values():
        names += [m for m, pts in per_metric.items() if pts and m not in names]
    if not names:
        return None
    colors = _colors(variants)
    fig, nrows, ncols = _new_figure(len(names), 3, 4.6, 3.2)
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for variant in variants:
            pts = series[variant].get(name) or []
            if pts:
                steps, values = zip(*pts, strict=True)
                ax.plot(
                    steps,
                    values,
                    label=variant,
                    color=colors[variant],
                    marker="o" if len(pts) < 30 else None,
                    markersize=3,
                    linewidth=1.4,
                )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Training curves", fontsize=10)  # one narrow panel: the report title would not fit
    return io.write_figure(fig, path, dpi=110)


def write_report(
    results: list[dict],
    out_dir: Path,
    *,
    title: str,
    extra: dict | None = None,
    promotion: dict | None = None,
    loss_curves: dict | None = None,
    review: dict | None = None,
    differences: list[dict] | None = None,
    alpha: float = 0.05,
) -> dict:
    """Write the report files (see the module docstring) for ``results`` (one per variant) into ``out_dir``.

    ``promotion``: {"primary_metric", "higher_is_better", "candidate", "promoted", "champion_before":
    {"version", "variant", "value"} | None, "version", "reasons": [str]} -> the Promotion section on top.
    ``loss_curves``: {variant: {metric name: [(step, value), ...]}} -> loss_curves.png.
    ``review``: {"variants": {variant: {numeric stat: value}}, "source": path, ...} -> the Human review section.
    ``differences``: phases.compare.paired_differences rows -> the Differences to the base section (``alpha``:
    the significance level they were computed with).
    Returns {"markdown": text, "table": [row per variant], "paths": {"report", "html", "csv", "plot",
    "summary"} + "loss_plot" when curves were drawn}.
    """
    if not results:
        raise ValueError("write_report needs at least one evaluated variant")
    names = [r["variant"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    out_dir = Path(out_dir)
    table = build_table(results)
    metrics = present_metrics(results)
    paths = {
        "report": out_dir / "report.md",
        "html": out_dir / "report.html",
        "csv": out_dir / "metrics.csv",
        "plot": out_dir / "comparison.png",
        "summary": out_dir / "summary.json",
    }
    _write_png(table, metrics, paths["plot"], title)
    ordered = [r["variant"] for r in _ordered(results)]
    curve_variants = ordered + [v for v in (loss_curves or {}) if v not in ordered]
    loss_plot = _write_loss_png(loss_curves or {}, curve_variants, out_dir / "loss_curves.png", title)
    if loss_plot is not None:
        paths["loss_plot"] = loss_plot
    else:  # no stale curves from an earlier report next to this one
        (out_dir / "loss_curves.png").unlink(missing_ok=True)
    blocks = build_blocks(
        results,
        table,
        title=title,
        plot=paths["plot"],
        extra=extra,
        promotion=promotion,
        loss_plot=loss_plot,
        review=review,
        differences=differences,
        alpha=alpha,
    )
    markdown = render_markdown(blocks)
    page = render_html(blocks, title)
    io.write_text(markdown, paths["report"])
    io.write_text(page, paths["html"])
    io.write_text(_csv_text(results), paths["csv"])
    summary = {
        "title": title,
        "extra": extra or {},
        "table": table,
        "key_metrics": [k for k, _, _ in metrics],
        "intervals": {r["variant"]: r.get("intervals") or {} for r in _ordered(results)},
        "differences": differences or [],
        "guardrails": {r["variant"]: r.get("guardrails") or {} for r in _ordered(results)},
        "warnings": {r["variant"]: list(r.get("warnings") or []) for r in _ordered(results)},
        "promotion": promotion,
        "review": review,
    }
    io.write_json(summary, paths["summary"])
    return {"markdown": markdown, "table": table, "paths": {k: str(v) for k, v in paths.items()}}

"""Comparison report over evaluated variants (results of ``phases.evaluate.evaluate_variant``).

``write_report`` writes, atomically, into ``out_dir``:
- ``report.md``: one row per variant (base, inst, dpo, tr first) x key metrics, the best value of each column
  in bold; then per-variant details (every metric, a few generated definitions) and the judge calibration;
- ``metrics.csv``: one row per variant, every flat metric as a column (key metrics first);
- ``comparison.png``: one bar subplot per key metric (each with its own scale), one bar per variant.
matplotlib is used through its object API with the Agg canvas: no global backend switch, no display needed.
"""

import csv
import json
import math
from io import StringIO
from pathlib import Path

from finetune_assets import io

# (flat metric name, column label, higher is better)
KEY_METRICS: list[tuple[str, str, bool]] = [
    ("fa_domain_mc/acc", "Domain MC acc", True),
    ("fa_domain_qa/rougeL", "Domain QA ROUGE-L", True),
    ("hallucination/index", "Glossary correct (halluc. index)", True),
    ("perplexity/token", "Held-out PPL (token)", False),
    ("fa_heldout_ppl/word_perplexity", "Held-out word PPL (lm-eval)", False),
    ("tool_use/accuracy", "Tool-use acc", True),
    ("generation/tokens_per_s", "Tokens/s", True),
]
VARIANT_ORDER = ["base", "inst", "dpo", "tr"]
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


def _ordered(results: list[dict]) -> list[dict]:
    rank = {name: i for i, name in enumerate(VARIANT_ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["variant"], len(rank)), results.index(r)))


def _num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value) -> str:
    value = _num(value)
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def _best(values: list[float | None], higher: bool) -> float | None:
    present = [v for v in values if v is not None]
    if len(set(present)) < 2:  # nothing to compare, or all equal: no winner to mark
        return None
    return max(present) if higher else min(present)


def build_table(results: list[dict]) -> list[dict]:
    """One row per variant: {"variant": name, <flat metric>: value or None for each key metric}."""
    return [
        {"variant": r["variant"], **{key: _num(r["metrics"].get(key)) for key, _, _ in KEY_METRICS}}
        for r in _ordered(results)
    ]


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _definition_examples(result: dict, n: int) -> list[dict]:
    path = (result.get("files") or {}).get("definitions")
    if not path or not Path(path).is_file():
        return []
    return io.read_jsonl(Path(path))[:n]


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_markdown(results: list[dict], table: list[dict], *, title: str, extra: dict | None = None) -> str:
    parts = [f"# {title}", ""]
    if extra:
        parts += [f"- **{k}**: {v}" for k, v in extra.items()] + [""]
    parts += ["## Comparison", ""]
    header = ["Variant"] + [f"{label} {'↑' if higher else '↓'}" for _, label, higher in KEY_METRICS]
    best = {key: _best([row[key] for row in table], higher) for key, _, higher in KEY_METRICS}
    rows = []
    for row in table:
        cells = [row["variant"]]
        for key, _, _ in KEY_METRICS:
            text = _fmt(row[key])
            cells.append(f"**{text}**" if row[key] is not None and row[key] == best[key] else text)
        rows.append(cells)
    parts += [_markdown_table(header, rows), ""]
    parts += [
        "Glossary correct = share of glossary terms the model defined correctly (ROUGE-L or embedding judge; "
        "1 - hallucination rate). Perplexities are on held-out documents never used for training; token PPL "
        "depends on the tokenizer, so compare it across variants of one base model only. "
        "Bold = best per column.",
        "",
    ]

    calibration = next((r.get("calibration") for r in results if r.get("calibration")), None)
    parts += ["## Judge calibration", ""]
    if calibration and calibration.get("self_accept_rate") is not None:
        judge = f"ROUGE-L F1 >= {calibration['rouge_threshold']}"
        if calibration.get("embedder"):
            judge += f" OR cosine (all-MiniLM-L6-v2) >= {calibration['embed_threshold']}"
        parts += [f"Judge: {judge}; {calibration['n_terms']} glossary terms.", ""]
        cal_rows = [
            [desc.format(truncate_words=calibration.get("truncate_words")), _fmt(calibration.get(key))]
            for key, desc in CALIBRATION_ROWS
            if calibration.get(key) is not None
        ]
        parts += [_markdown_table(["Check", "Value"], cal_rows), ""]
    else:
        parts += ["No calibration (fewer than two glossary terms).", ""]

    parts += ["## Variants", ""]
    for result in _ordered(results):
        parts += [f"### {result['variant']}", ""]
        parts.append(f"- model: `{result.get('model_dir')}`")
        if result.get("adapter_dir"):
            parts.append(f"- adapter: `{result['adapter_dir']}`")
        if result.get("counts"):
            parts.append("- eval items: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
        parts.append("")
        metric_rows = [[name, _fmt(value)] for name, value in sorted(result["metrics"].items())]
        parts += [_markdown_table(["Metric", "Value"], metric_rows), ""]
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
            parts += [
                "Sample definitions:",
                "",
                _markdown_table(["Term", "Generated", "ROUGE-L", "Cosine", "Correct"], ex_rows),
                "",
            ]
    return "\n".join(parts).rstrip() + "\n"


def _csv_text(results: list[dict]) -> str:
    keys = [key for key, _, _ in KEY_METRICS]
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


def _write_png(table: list[dict], path: Path, title: str) -> Path:
    """One subplot per key metric (own y scale), one bar per variant; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = [row["variant"] for row in table]
    ncols = 3
    nrows = math.ceil(len(KEY_METRICS) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    colors = [f"C{i}" for i in range(len(variants))]
    for i, (key, label, higher) in enumerate(KEY_METRICS):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [row[key] for row in table]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(variants, heights, color=colors)
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


def write_report(results: list[dict], out_dir: Path, *, title: str, extra: dict | None = None) -> dict:
    """Write report.md, metrics.csv and comparison.png for ``results`` (one per variant) into ``out_dir``.

    Returns {"markdown": text, "table": [row per variant], "paths": {"report", "csv", "plot", "summary"}}.
    """
    if not results:
        raise ValueError("write_report needs at least one evaluated variant")
    names = [r["variant"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    out_dir = Path(out_dir)
    table = build_table(results)
    markdown = build_markdown(results, table, title=title, extra=extra)
    paths = {
        "report": out_dir / "report.md",
        "csv": out_dir / "metrics.csv",
        "plot": out_dir / "comparison.png",
        "summary": out_dir / "summary.json",
    }
    io.write_text(markdown, paths["report"])
    io.write_text(_csv_text(results), paths["csv"])
    _write_png(table, paths["plot"], title)
    summary = {
        "title": title,
        "extra": extra or {},
        "table": table,
        "key_metrics": [k for k, _, _ in KEY_METRICS],
    }
    io.write_text(json.dumps(summary, indent=2, default=str), paths["summary"])
    return {"markdown": markdown, "table": table, "paths": {k: str(v) for k, v in paths.items()}}

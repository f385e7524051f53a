"""Comparison report over evaluated variants (results of ``phases.evaluation.variant.evaluate_variant``).

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

import csv
from io import StringIO
from pathlib import Path

from finetune_assets import io
from finetune_assets.phases.evaluation.render import (
    Block,
    as_number,
    in_variant_order,
    render_html,
    render_markdown,
    write_loss_png,
    write_metrics_png,
)
from finetune_assets.phases.evaluation.report_sections import (
    KEY_METRICS,
    calibration_blocks,
    comparison_blocks,
    difference_blocks,
    guardrail_blocks,
    promotion_blocks,
    review_blocks,
    variant_blocks,
    warning_blocks,
)


def present_metrics(results: list[dict]) -> list[tuple[str, str, bool]]:
    """The KEY_METRICS at least one variant has a finite value for (the others would be all "-")."""
    return [
        entry
        for entry in KEY_METRICS
        if any(as_number((r.get("metrics") or {}).get(entry[0])) is not None for r in results)
    ]


def build_table(results: list[dict]) -> list[dict]:
    """One row per variant: {"variant": name, <flat metric>: value or None for each present key metric}."""
    keys = [key for key, _, _ in present_metrics(results)]
    return [
        {"variant": r["variant"], **{key: as_number(r["metrics"].get(key)) for key in keys}}
        for r in in_variant_order(results)
    ]


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
        blocks += promotion_blocks(promotion, results)
    if extra:
        if promotion:
            blocks.append(("h", 2, "Run"))
        blocks.append(("ul", [f"**{k}**: {v}" for k, v in extra.items()]))
    blocks += comparison_blocks(table, present_metrics(results), plot, results)
    if differences is not None:
        blocks += difference_blocks(differences, alpha)
    blocks += guardrail_blocks(results)
    blocks += warning_blocks(results)
    if loss_plot is not None:
        blocks += [
            ("h", 2, "Training curves"),
            ("p", "Per-step metrics of each variant's training run (one subplot per metric)."),
            ("img", loss_plot, "Training curves per variant"),
        ]
    if review:
        blocks += review_blocks(review)
    blocks += calibration_blocks(results)
    blocks += variant_blocks(results)
    return blocks


def _csv_text(results: list[dict]) -> str:
    keys = [key for key, _, _ in present_metrics(results)]
    others = sorted({k for r in results for k in r["metrics"]} - set(keys))
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["variant", *keys, *others])
    for r in in_variant_order(results):
        writer.writerow(
            [
                r["variant"],
                *("" if as_number(r["metrics"].get(k)) is None else r["metrics"][k] for k in keys + others),
            ]
        )
    return buf.getvalue()


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
    ``differences``: phases.evaluation.compare.paired_differences rows -> the Differences to the base section
    (``alpha``: the significance level they were computed with).
    Returns {"markdown": text, "markdown_embedded": the same with the images inlined (data URIs),
    "table": [row per variant], "paths": {"report", "html", "csv", "plot",
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
    write_metrics_png(table, metrics, paths["plot"], title)
    ordered = [r["variant"] for r in in_variant_order(results)]
    curve_variants = ordered + [v for v in (loss_curves or {}) if v not in ordered]
    loss_plot = write_loss_png(loss_curves or {}, curve_variants, out_dir / "loss_curves.png", title)
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
        "intervals": {r["variant"]: r.get("intervals") or {} for r in in_variant_order(results)},
        "differences": differences or [],
        "guardrails": {r["variant"]: r.get("guardrails") or {} for r in in_variant_order(results)},
        "warnings": {r["variant"]: list(r.get("warnings") or []) for r in in_variant_order(results)},
        "promotion": promotion,
        "review": review,
    }
    io.write_json(summary, paths["summary"])
    return {
        "markdown": markdown,
        "markdown_embedded": render_markdown(blocks, embed_images=True),  # for Dagster's metadata
        "table": table,
        "paths": {k: str(v) for k, v in paths.items()},
    }

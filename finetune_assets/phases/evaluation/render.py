"""Report rendering: the block model (headings, paragraphs, tables) to Markdown and HTML, and the PNG charts.

Blocks are plain tuples (``("h2", text)``, ``("p", text)``, ``("table", header, rows)``, ...) built by
phases.evaluation.report; this module only turns them into text or pictures. matplotlib loads lazily.
Kept instead of a jinja2 template: one block list renders to both Markdown and HTML, where templates would be
two copies of the report's structure to keep in step.
"""

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.phases.text.markdown import markdown_table

VARIANT_ORDER = ["base", "inst", "dpo", "tr"]

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


def in_variant_order(results: list[dict]) -> list[dict]:
    rank = {name: i for i, name in enumerate(VARIANT_ORDER)}
    return sorted(results, key=lambda r: (rank.get(r["variant"], len(rank)), results.index(r)))


def as_number(value) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def format_value(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = as_number(value)
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def _as_cell(value) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))


def _markdown_table(header: list[str], rows: list[list]) -> str:
    return markdown_table(header, [[_as_cell(c).text for c in row] for row in rows])


def png_data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_markdown(blocks: list[Block], embed_images: bool = False) -> str:
    """Markdown of the blocks. Images link to the PNG beside the report file, or with ``embed_images`` are
    inlined as data URIs: what Dagster's Markdown metadata needs, since it resolves no relative link."""
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
            target = png_data_uri(block[1]) if embed_images else Path(block[1]).name
            parts += [f"![{block[2]}]({target})", ""]
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
            alt = html.escape(block[2])
            body.append(f'<figure><img alt="{alt}" src="{png_data_uri(block[1])}"></figure>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{HTML_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


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


def write_metrics_png(
    table: list[dict], metrics: list[tuple[str, str, bool]], path: Path, title: str
) -> Path:
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
                format_value(value),
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
        if as_number(value) is not None and as_number(step) is not None:
            out.append((int(step), float(value)))
    return sorted(out)


def write_loss_png(curves: dict, variants: list[str], path: Path, title: str) -> Path | None:
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

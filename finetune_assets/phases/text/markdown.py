"""One Markdown table writer for the report, the asset metadata and the CLI."""

from collections.abc import Iterable, Sequence


def escape_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table of text cells; a "|" inside a cell is escaped."""
    lines = [
        "| " + " | ".join(escape_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(escape_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

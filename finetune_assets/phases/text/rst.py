"""A small reStructuredText toolkit for the Python documentation sources: inline markup cleanup, section and
heading detection, module synopses, and prose paragraphs without code or directives.

Written here rather than taken from docutils: the sources only need reading, not rendering, and docutils
rejects the Sphinx roles and directives they are full of.
"""

import re
from typing import NamedTuple


def strip_underlines(text: str) -> str:
    # pydoc topic texts carry their own underlined headings; inside a FAQ section they would start new
    # sections and cut the answer off, so they become plain lines.
    return "\n".join(line for line in text.splitlines() if not is_underline(line))


_UNDERLINE_CHARS = "=-`:'\"~^_*+#<>"

_ROLE = re.compile(r":(?:[\w.+-]+:)+`([^`]+)`")

_LINK = re.compile(r"`([^`<]+?)\s*<[^>`]*>`_{1,2}")

_REF = re.compile(r"`([^`]+)`_{1,2}")

_LITERAL = re.compile(r"``(.+?)``")

_DEFAULT_ROLE = re.compile(r"`([^`]+)`")

_STRONG = re.compile(r"\*\*(\S(?:[^*]*?\S)?)\*\*")

_EMPH = re.compile(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])")

_FOOTNOTE = re.compile(r"\s*\[(?:#[\w-]*|\d+|\*)\]_")

_SUBST = re.compile(r"\|(\w[\w -]*)\|_{0,2}")

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _role_text(match: re.Match) -> str:
    inner = match.group(1)
    role = match.group(0)[1:].split(":", 1)[0]
    if role in ("rfc", "pep"):  # rendered as "RFC 7159" / "PEP 8"
        return f"{role.upper()} {inner.split('#')[0]}"
    if inner.endswith(">") and "<" in inner:
        inner = inner[: inner.rindex("<")].strip() or inner
    if inner.startswith("~"):  # Sphinx shows only the last component of ~a.b.c
        inner = inner[1:].rsplit(".", 1)[-1]
    return inner.lstrip("!")


def clean_inline(text: str) -> str:
    """reST inline markup to plain text: roles keep their shown text (:func:`f` -> f, :ref:`x <t>` -> x),
    ``literals``, links, emphasis and substitutions keep their content; footnote marks go; whitespace is
    collapsed. A trailing '::' (literal-block marker) becomes ':' as reST renders it."""
    # Literal and role contents (``f(*args)``) are parked as numbered tokens so their '*' and '`' are not read
    # as emphasis afterwards.
    parked: list[str] = []

    def park(value: str) -> str:
        parked.append(value)
        return f"\x00{len(parked) - 1}\x00"

    text = _LITERAL.sub(lambda m: park(m.group(1)), text)
    text = _ROLE.sub(lambda m: park(_role_text(m)), text)
    text = _LINK.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = _DEFAULT_ROLE.sub(lambda m: park(m.group(1)), text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = re.sub("\x00(\\d+)\x00", lambda m: parked[int(m.group(1))], text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBST.sub(r"\1", text)
    text = text.replace("\\ ", "").replace("\\", "")
    text = " ".join(text.split())
    if text.endswith("::"):
        text = text[:-2].rstrip() + ("" if text[:-2].endswith(" ") else ":")
    return text.strip()


def is_underline(line: str) -> bool:
    stripped = line.rstrip()
    return len(stripped) >= 2 and stripped[0] in _UNDERLINE_CHARS and stripped == stripped[0] * len(stripped)


class ModuleSynopsis(NamedTuple):
    module: str
    synopsis: str
    intro: str


class Section(NamedTuple):
    title: str  # cleaned of inline markup
    level: str  # underline character, or '#'*n for Markdown headings
    lines: list[str]  # body lines up to the next heading


def iter_sections(text: str) -> list[Section]:
    """Split reST (title + underline, optional overline) or Markdown (# title) text into sections.

    Text before the first heading is returned as a section with an empty title.
    """
    lines = text.splitlines()
    heads: list[tuple[int, int, str, str]] = []  # (start of heading, first body line, title, level)
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prev_blank = i == 0 or not lines[i - 1].strip()
        md = _MD_HEADING.match(line)
        if md and prev_blank:
            heads.append((i, i + 1, md.group(2), md.group(1)))
        elif (
            line.strip()
            and not is_underline(line)
            and is_underline(nxt)
            and len(nxt.rstrip()) >= len(line.rstrip())
            # only a title with an overline may be indented
            and ((prev_blank and not line[0].isspace()) or (i > 0 and is_underline(lines[i - 1])))
        ):
            start = i - 1 if i > 0 and is_underline(lines[i - 1]) else i
            heads.append((start, i + 2, line.strip(), nxt.strip()[0]))
            i += 1
        i += 1
    sections = []
    first_start = heads[0][0] if heads else len(lines)
    if first_start > 0:
        sections.append(Section("", "", lines[:first_start]))
    for k, (_, body_start, title, level) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        sections.append(Section(clean_inline(title), level, lines[body_start:end]))
    return sections


_MODULE_DIRECTIVE = re.compile(r"^\s*\.\. (?:py:)?module::\s*(\S+)\s*$")

_SYNOPSIS_OPTION = re.compile(r"^\s+:synopsis:\s*(.+?)\s*$")


def module_synopses(text: str) -> list[ModuleSynopsis]:
    """Each ``.. module:: x`` with a ``:synopsis:`` option: (module, cleaned synopsis, first intro paragraph
    of at least 80 characters after the directive, "" when none); modules without a synopsis are skipped."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        mod = _MODULE_DIRECTIVE.match(line)
        if not mod:
            continue
        synopsis, j = "", i + 1
        while j < len(lines) and lines[j].strip() and indent_of(lines[j]) > indent_of(line):
            option = _SYNOPSIS_OPTION.match(lines[j])
            synopsis = clean_inline(option.group(1)) if option else synopsis
            j += 1
        if synopsis:
            intro = next((p for p in prose_paragraphs(lines[j : j + 60]) if len(p) >= 80), "")
            found.append(
                ModuleSynopsis(mod.group(1), synopsis, "" if intro.startswith("Source code") else intro)
            )
    return found


_TITLE_TAIL = re.compile(r"^(.*?\S)\s+-{2,3}\s+(.+?)\s*$")  # ":mod:`os` --- Miscellaneous ... interfaces"


def _synopsis_key(text: str) -> str:
    return clean_inline(text).rstrip(". ").lower()


def strip_synopses(text: str, synopses: set[str]) -> str:
    """``text`` without the held-out ``synopses``: their ``:synopsis:`` lines go, and a page title that
    repeats one (``:mod:`os` --- Miscellaneous operating system interfaces``) keeps only its module part."""
    if not synopses:
        return text
    keys = {_synopsis_key(s) for s in synopses}
    kept = []
    for line in text.splitlines(keepends=True):
        option = _SYNOPSIS_OPTION.match(line)
        if option and _synopsis_key(option.group(1)) in keys:
            continue
        title = _TITLE_TAIL.match(line.rstrip("\n"))
        if title and _synopsis_key(title.group(2)) in keys:
            line = title.group(1) + ("\n" if line.endswith("\n") else "")
        kept.append(line)
    return "".join(kept)


def first_heading(text: str) -> str | None:
    for section in iter_sections(text[:20000]):
        if section.title:
            return section.title
    return None


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def prose_paragraphs(lines: list[str], drop_intros: bool = True) -> list[str]:
    """Cleaned prose paragraphs of a reST block: directives (with their bodies), comments, literal blocks
    after '::', doctest blocks, tables and option lines are skipped; bullets keep their text.

    drop_intros: also drop short paragraphs ending in ':' ("Compact encoding:"), which only introduce the
    example or list that follows and say nothing alone.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    skip_deeper_than: int | None = None  # skip lines indented more than this (directive / literal body)

    def flush():
        if current:
            paragraphs.append(" ".join(line.strip() for line in current))
            current.clear()

    for line in lines:
        if skip_deeper_than is not None:
            if not line.strip() or indent_of(line) > skip_deeper_than:
                continue
            skip_deeper_than = None
        stripped = line.strip()
        if not stripped:
            flush()
            continue
        if stripped.startswith(".. ") or stripped == "..":
            flush()
            skip_deeper_than = indent_of(line)
            continue
        if stripped.endswith("::"):  # the paragraph goes on; the indented block after it is code
            current.append(line)
            flush()
            skip_deeper_than = indent_of(line)
            continue
        if is_underline(stripped) or (not current and stripped.startswith((">>>", "+-", "| "))):
            current.append("\0")  # doctest, grid/simple table or line block: marks the paragraph non-prose
            continue
        if not current and re.match(r":[\w -]+:(\s|$)", stripped):  # field/option list line
            continue
        current.append(line)
    flush()
    cleaned = []
    for para in paragraphs:
        if "\0" in para:
            continue
        para = re.sub(r"^(?:[*+-]|\d+\.|#\.)\s+", "", para)
        para = clean_inline(para)
        if para and (not drop_intros or len(para) > 60 or not para.endswith(":")):
            cleaned.append(para)
    return cleaned

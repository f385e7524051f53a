"""Document quality filters (Gopher / C4 style), applied in dedup_corpus.

Each filter compares one signal of a document with a bound from QualityConfig; a bound of None switches
that filter off. A document is removed by the *first* failing filter, in the order of FILTERS, so the
per-filter counts add up to the number of removed documents.

Signals (Rae et al. 2021, "Scaling Language Models", appendix A; datatrove's GopherQualityFilter), computed
on the raw text (reST source for the demo corpus):
- word_count: whitespace-separated words.
- mean_word_length: mean length of the words, punctuation-only words left out.
- symbol_ratio: symbol words per word: "#"-runs, "...", "…", bullet characters ("•", "▪", ...) anywhere, and
  "*", "+", "-", "–", "—" where they open a line (list markers; elsewhere they are operators or dashes).
  Gopher counts every "#" and "..." occurrence; counting standalone words instead leaves "C#", URL anchors
  (page.html#section) and "etc..." alone, which documentation is full of.
- duplicate_line_fraction: share of non-blank lines (whitespace-stripped) that repeat an earlier line.
- alpha_ratio: share of words containing at least one letter.

Code-heavy documentation sits lower on alpha_ratio and higher on duplicate lines than the web text the
Gopher bounds were tuned on (doctest output, tables of numbers, repeated "import argparse" in examples).
"""

import operator
import re
from collections.abc import Callable
from typing import NamedTuple

from finetune_assets.config import QualityConfig

# Whole-text regexes (one C-speed pass each rather than a Python loop over words). A "word" is a
# whitespace-delimited token, so each pattern is anchored on whitespace on both sides.
_TOKEN = r"(?<!\S){}(?!\S)"

# Symbol words anywhere: hashes, ellipses, bullet characters.
_SYMBOL_WORD = re.compile(_TOKEN.format(r"(?:#+|\.\.\.|…|[•●○◦▪▫■□‣⁃∙·►▶➢➤✓✔])"))

# "*", "+", "-" and dashes are list markers only where they open a line (elsewhere: operators, prose dashes).
_LINE_BULLET = re.compile(r"^[^\S\n]*[*+\-–—](?!\S)", re.MULTILINE)

_PUNCT_WORD = re.compile(_TOKEN.format(r"[^\w\s]+"))

_NO_LETTER_WORD = re.compile(_TOKEN.format(r"(?:[^\w\s]|[\d_])+"))


def quality_signals(text: str) -> dict:
    """The signals the filters compare with their bounds (see the module docstring)."""
    words = text.split()
    n_words = len(words)
    punct = _PUNCT_WORD.findall(text)
    n_lengths = n_words - len(punct)
    symbols = len(_SYMBOL_WORD.findall(text)) + len(_LINE_BULLET.findall(text))
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return {
        "word_count": n_words,
        "mean_word_length": (sum(map(len, words)) - sum(map(len, punct))) / n_lengths if n_lengths else 0.0,
        "symbol_ratio": symbols / n_words if n_words else 0.0,
        "duplicate_line_fraction": (len(lines) - len(set(lines))) / len(lines) if lines else 0.0,
        "alpha_ratio": (n_words - len(_NO_LETTER_WORD.findall(text))) / n_words if n_words else 0.0,
    }


class Filter(NamedTuple):
    name: str  # also the QualityConfig field holding the bound
    signal: str
    fails: Callable[[float, float], bool]  # (value, bound) -> the document fails


# Order matters: a document is reported under the first filter it fails.
FILTERS = (
    Filter("min_words", "word_count", operator.lt),
    Filter("max_words", "word_count", operator.gt),
    Filter("min_mean_word_length", "mean_word_length", operator.lt),
    Filter("max_mean_word_length", "mean_word_length", operator.gt),
    Filter("max_symbol_ratio", "symbol_ratio", operator.gt),
    Filter("max_duplicate_line_fraction", "duplicate_line_fraction", operator.gt),
    Filter("min_alpha_ratio", "alpha_ratio", operator.lt),
)


def first_failure(signals: dict, cfg: QualityConfig) -> tuple[str, float, float] | None:
    """(filter name, value, bound) of the first filter the signals fail, or None when all pass."""
    for f in FILTERS:
        bound = getattr(cfg, f.name)
        if bound is not None and f.fails(signals[f.signal], bound):
            return f.name, signals[f.signal], bound
    return None


def filter_documents(docs: list[dict], cfg: QualityConfig) -> dict:
    """Split documents into kept (input order) and removed, each removal with the filter that caught it.

    Returns {kept, removed: [{id, source, drop, filter, value, bound}], counts: {filter name: removed},
    stats: {input, kept, removed}}. ``counts`` lists every filter (0 when it removed nothing).
    """
    kept, removed = [], []
    counts = {f.name: 0 for f in FILTERS}
    for doc in docs:
        failure = first_failure(quality_signals(doc["text"]), cfg) if cfg.enabled else None
        if failure is None:
            kept.append(doc)
            continue
        name, value, bound = failure
        counts[name] += 1
        removed.append(
            {
                "id": doc["id"],
                "source": doc["source"],
                "drop": doc["drop"],
                "filter": name,
                "value": value if isinstance(value, int) else round(value, 4),
                "bound": bound,
            }
        )
    return {
        "kept": kept,
        "removed": removed,
        "counts": counts,
        "stats": {"input": len(docs), "kept": len(kept), "removed": len(removed)},
    }

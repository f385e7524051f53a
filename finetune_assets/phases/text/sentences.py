"""Sentence cuts for documentation prose: split, first sentence, and truncation at a sentence end."""

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`*])")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def first_sentence(text: str, min_chars: int = 0) -> str:
    """The first sentence of ``text``; sentences are added while shorter than ``min_chars``, so a bare
    "Yes." does not stand for a whole answer."""
    out = ""
    for sentence in split_sentences(text):
        out = f"{out} {sentence}".strip()
        if len(out) >= min_chars:
            break
    return out


def drop_dangling_intro(text: str) -> str:
    """Drop a last sentence ending in ':' ("... add the following to your class:"): it announces an
    example that plain text no longer carries. Kept when it is the only sentence."""
    sentences = split_sentences(text)
    if len(sentences) > 1 and sentences[-1].endswith(":"):
        return " ".join(sentences[:-1])
    return text


def truncate_at_sentence(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` at a sentence end (at a word when the first sentence is
    already too long)."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    out = ""
    for sentence in split_sentences(text):
        candidate = f"{out} {sentence}".strip()
        if len(candidate) > max_chars:
            break
        out = candidate
    if out:
        return out
    cut = text[:max_chars].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "..."

"""quality phase: Gopher/C4-style document filters, each shown catching a document built to fail it."""

import pytest

from finetune_assets.config import QualityConfig
from finetune_assets.phases.data.quality import FILTERS, filter_documents, quality_signals

PROSE = (
    "The standard library offers modules for reading files, talking to networks and parsing text.\n"
    "Each module documents its functions, the arguments they accept and the errors they raise.\n"
    "Examples show typical use, and a short tutorial walks through the most common tasks first.\n"
    "Readers who want more detail can follow the references to the language specification.\n"
    "Older behaviour is described where it changed, with the release that introduced the change.\n"
)

# The bounds of the Gopher paper, spelled out so that these tests do not move with the project defaults.
GOPHER = QualityConfig(
    min_words=50,
    max_words=100_000,
    min_mean_word_length=3.0,
    max_mean_word_length=10.0,
    max_symbol_ratio=0.1,
    max_duplicate_line_fraction=0.3,
    min_alpha_ratio=0.8,
)

# One document per filter, each failing that filter under GOPHER and passing every other one.
FAILING = {
    "min_words": "Too short to be worth training on.",
    # 10,100 distinct lines of 10 words: just over the 100,000-word bound
    "max_words": "".join(
        f"Section{i} explains one topic in plain words for careful readers.\n" for i in range(10_100)
    ),
    "min_mean_word_length": " ".join(["a", "to", "of", "is", "it", "an", "on", "by"] * 10),
    "max_mean_word_length": " ".join(
        ["internationalization", "characteristically", "counterrevolutionary"] * 20
    ),
    "max_symbol_ratio": PROSE + "".join(f"# note{i} about the same thing\n" for i in range(30)),  # ratio 0.12
    "max_duplicate_line_fraction": PROSE + "Click here to subscribe to our newsletter today.\n" * 12,
    "min_alpha_ratio": PROSE
    + "\n".join(" ".join(str(1000 + 10 * i + j) for j in range(9)) for i in range(20)),
}


def _doc(name: str, text: str) -> dict:
    return {"id": name, "text": text, "source": f"{name}.txt", "drop": "drop-1", "content_hash": "x"}


def test_signals_of_a_small_document():
    text = "alpha beta\n# 12 ...\nalpha beta\n\n  alpha beta  \n"
    s = quality_signals(text)
    assert s["word_count"] == 9
    # punctuation-only words ("#", "...") are left out of the mean length: 5,4,2,5,4,5,4 over 7 words
    assert s["mean_word_length"] == pytest.approx(29 / 7)
    assert s["symbol_ratio"] == pytest.approx(2 / 9)  # "#" and "..."
    assert s["duplicate_line_fraction"] == pytest.approx(2 / 4)  # 4 non-blank lines, 2 repeat the first
    assert s["alpha_ratio"] == pytest.approx(6 / 9)  # "#", "12", "..." have no letter
    assert quality_signals("") == {
        "word_count": 0,
        "mean_word_length": 0.0,
        "symbol_ratio": 0.0,
        "duplicate_line_fraction": 0.0,
        "alpha_ratio": 0.0,
    }


def test_bullets_count_as_symbols_only_when_they_open_a_line():
    assert quality_signals("* item one\n- item two")["symbol_ratio"] == pytest.approx(2 / 6)
    assert quality_signals("a * b - c – d")["symbol_ratio"] == 0.0


def test_prose_passes_every_filter():
    result = filter_documents([_doc("prose", PROSE)], QualityConfig())
    assert [d["id"] for d in result["kept"]] == ["prose"]
    assert result["removed"] == [] and set(result["counts"].values()) == {0}


@pytest.mark.parametrize("name", list(FAILING))
def test_each_filter_removes_the_document_built_to_fail_it(name):
    docs = [_doc("prose", PROSE), _doc(name, FAILING[name]), _doc("prose-2", PROSE.upper())]
    result = filter_documents(docs, GOPHER)
    assert [d["id"] for d in result["kept"]] == ["prose", "prose-2"]  # input order kept
    (removed,) = result["removed"]
    assert removed["id"] == name and removed["filter"] == name
    assert removed["source"] == f"{name}.txt" and removed["drop"] == "drop-1"
    assert removed["bound"] == getattr(GOPHER, name)
    assert result["counts"] == {f.name: int(f.name == name) for f in FILTERS}
    assert result["stats"] == {"input": 3, "kept": 2, "removed": 1}


@pytest.mark.parametrize("name", list(FAILING))
def test_a_none_bound_switches_its_filter_off(name):
    result = filter_documents([_doc(name, FAILING[name])], GOPHER.model_copy(update={name: None}))
    assert [d["id"] for d in result["kept"]] == [name]
    assert result["counts"][name] == 0


def test_first_failing_filter_is_the_one_reported():
    # Short *and* made of numbers: min_words comes first in FILTERS, so it alone is charged.
    result = filter_documents([_doc("both", "1 2 3 4 5")], QualityConfig())
    assert result["removed"][0]["filter"] == "min_words"
    assert result["removed"][0]["value"] == 5
    assert sum(result["counts"].values()) == 1


def test_disabled_keeps_everything():
    docs = [_doc(name, text) for name, text in FAILING.items()]
    result = filter_documents(docs, GOPHER.model_copy(update={"enabled": False}))
    assert result["kept"] == docs
    assert result["removed"] == [] and set(result["counts"].values()) == {0}
    assert result["stats"] == {"input": len(docs), "kept": len(docs), "removed": 0}

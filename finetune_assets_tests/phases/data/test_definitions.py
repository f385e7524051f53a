"""definitions: documented descriptions rewritten to name their subject first."""

import pytest

from finetune_assets.phases.data.definitions import module_predicate, predicate, subject_first, third_person


@pytest.mark.parametrize(
    ("verb", "expected"),
    [("return", "returns"), ("pass", "passes"), ("copy", "copies"), ("do", "does"), ("match", "matches"),
     ("play", "plays")],
)  # fmt: skip
def test_third_person(verb, expected):
    assert third_person(verb) == expected


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Return the hash of the object.", "returns the hash of the object"),
        ("Encode and decode the JSON format.", "encodes and decodes the JSON format"),
        ("Returns a new list.", "returns a new list"),
        ("Raised when a key is missing.", "is raised when a key is missing"),
        ("A subclass of dict that counts.", "is a subclass of dict that counts"),
        ("Exception raised on timeouts.", "is an exception raised on timeouts"),
        ("Similar to open(), but binary.", "is similar to open(), but binary"),
        ("This function returns None.", "returns None"),
        ("Recursively delete a directory tree.", "recursively deletes a directory tree"),
        ("If x is given, return it.", None),
        ("The value is cached here.", None),  # a whole clause after "The": not a definition of the subject
        ("lowercase start.", None),
    ],
)
def test_predicate(sentence, expected):
    assert predicate(sentence) == expected


def test_module_predicate_noun_phrases_gerunds_and_cut_synopses():
    assert module_predicate("Support for gzip files.") == "provides support for gzip files"
    assert module_predicate("Interface to the Expat parser.") == "provides an interface to the Expat parser"
    assert module_predicate("Python debugger.") == "provides Python debugger"  # proper nouns keep their case
    assert module_predicate("Representing non-ASCII headers") == "is for representing non-ASCII headers"
    assert module_predicate("Utilities for the file system and") is None  # cut at its line end in the source


def test_subject_first_adds_a_short_first_sentences_follow_up_and_drops_pointers():
    assert subject_first("`x.f`", "Open it. The name is the base name of the database file on the disk.") == (
        "`x.f` opens it. The name is the base name of the database file on the disk."
    )
    long_first = (
        "Serialize obj to a JSON formatted str for files and net sockets using this conversion table. More."
    )
    assert (
        subject_first("`json.dumps`", long_first)
        == "`json.dumps` serializes obj to a JSON formatted str for files and net sockets."
    )
    assert subject_first("`f`", "If given, do it.") is None
    assert subject_first("`f`", "Return " + "very " * 80 + "much.") is None  # over the length limit

"""eval_sets phase: glossary and FAQ parsing, multiple choice, held-out selection, files on disk."""

import json

import pytest

from finetune_assets.config import EvalSetsConfig
from finetune_assets.phases.data import demo_seed
from finetune_assets.phases.data.corpus import make_document
from finetune_assets.phases.data.evalsets import (
    build_eval_sets,
    eval_texts,
    general_text_rows,
    load_eval_sets,
    man_to_text,
    parse_faq,
    parse_glossary,
    training_view,
)
from finetune_assets.phases.data.probes import load_redteam, make_canaries

GLOSSARY = """\
Glossary
========

.. glossary::

   ``>>>``
      The default Python prompt of the interactive shell.

   ``...``
      Can refer to:

      * The default prompt when entering an indented block.

   duck-typing
   duck typing
      A programming style which does not look at an object's type; see :term:`EAFP`
      and :func:`hasattr`.

      A second paragraph that is not part of the definition.

   generator
      A function which returns a :term:`generator iterator`.  It looks like a
      normal function except that it contains ``yield`` expressions.
"""


FAQ = """\
Programming FAQ
===============

General Questions
=================

Is there a debugger?
--------------------

Yes.

The :mod:`pdb` module is a simple but adequate console-mode debugger for Python.

How do I print?
---------------

::

   print("only code here")

Why is the sky blue?
--------------------

Because of Rayleigh scattering of sunlight in the atmosphere, which affects short wavelengths most.

How do I add numbers?
---------------------

Use the ``+`` operator, which adds two numbers and returns their sum.

A plain section
---------------

Not a question, so not an eval item.
"""


FILLER = "Ordinary documentation text that trains the model about many other things. " * 4


def _docs(n_other: int = 30) -> list[dict]:
    docs = [
        make_document("d1", "glossary.rst", GLOSSARY),
        make_document("d1", "faq/programming.rst", FAQ),
        make_document("d1", "faq/index.rst", "FAQ index\n=========\n\n" + FILLER),
    ]
    docs += [
        make_document("d1", f"library/m{i}.rst", f"Module {i}\n========\n\n{FILLER}") for i in range(n_other)
    ]
    return docs


def test_parse_glossary_cleans_roles_skips_pointers_and_aliases():
    entries = {e["term"]: e["definition"] for e in parse_glossary(GLOSSARY)}
    assert list(entries) == [">>>", "duck-typing", "generator"]  # "..." is a pointer entry
    assert entries["duck-typing"] == (
        "A programming style which does not look at an object's type; see EAFP and hasattr."
    )
    assert entries["generator"].endswith("contains yield expressions.")


def test_parse_faq_keeps_prose_answers_only():
    pairs = {p["question"]: p["answer"] for p in parse_faq(FAQ)}
    assert list(pairs) == ["Is there a debugger?", "Why is the sky blue?", "How do I add numbers?"]
    assert pairs["Is there a debugger?"].startswith("Yes. The pdb module is a simple")


def test_build_eval_sets_writes_contract_files(tmp_path):
    docs = _docs()
    cfg = EvalSetsConfig(
        mc_choices=3, heldout_fraction=0.2, max_heldout_docs=3, max_heldout_chars=100, max_general_docs=0
    )
    canaries = make_canaries(2, seed=1)
    manifest = build_eval_sets(docs, cfg, tmp_path / "eval", seed=1, canaries=canaries)
    sets = load_eval_sets(tmp_path / "eval")
    assert sets["manifest"] == json.loads(json.dumps(manifest))
    assert manifest["counts"] == {
        "glossary": 3, "qa_mc": 3, "qa_gen": 3, "heldout_text": 3, "general_text": 0,
        "redteam": len(load_redteam()), "canaries": 2, "tool_use": 24,
    }  # fmt: skip
    assert sets["canaries"] == canaries and {r["expect"] for r in sets["redteam"]} == {"refuse", "comply"}
    qa = {row["question"]: row["answer"] for row in sets["qa_gen"]}
    for row in sets["qa_mc"]:
        assert len(row["choices"]) == 3 and len(set(row["choices"])) == 3
        assert qa[row["question"]].startswith(row["choices"][row["answer_index"]])
    excluded = set(manifest["excluded_doc_ids"])
    held_ids = {row["doc_id"] for row in sets["heldout_text"]}
    assert {docs[0]["id"], docs[1]["id"]} | held_ids == excluded
    assert docs[2]["id"] not in excluded  # faq/index holds no eval item
    assert all(len(row["text"]) <= 100 for row in sets["heldout_text"])
    texts = eval_texts(tmp_path / "eval")
    assert "Why is the sky blue?" in texts and any(
        t.startswith(">>> The default Python prompt") for t in texts
    )


def test_build_takes_the_canaries_the_raw_drops_planted(tmp_path):
    from finetune_assets.phases.data.corpus import CANARIES_FILE
    from finetune_assets.phases.data.evalsets import build

    planted = make_canaries(2, seed=3)
    (tmp_path / "raw" / "d1").mkdir(parents=True)
    (tmp_path / "raw" / "d1" / CANARIES_FILE).write_text(json.dumps(planted))
    (tmp_path / "raw" / "d0").mkdir()  # a drop none of these documents came from: not read
    (tmp_path / "raw" / "d0" / CANARIES_FILE).write_text(json.dumps(make_canaries(1, seed=9)))
    cfg = EvalSetsConfig(mc_choices=3, heldout_fraction=0.2, max_heldout_docs=3, max_general_docs=0)
    manifest = build(_docs(), cfg, tmp_path / "eval", raw_corpus_root=tmp_path / "raw", seed=1)
    assert manifest["counts"]["canaries"] == 2 and load_eval_sets(tmp_path / "eval")["canaries"] == planted


def test_build_eval_sets_is_deterministic_and_respects_caps(tmp_path):
    docs = _docs()
    cfg = EvalSetsConfig(max_glossary_terms=2, max_qa=2, mc_choices=2)
    first = build_eval_sets(docs, cfg, tmp_path / "a", seed=3)
    second = build_eval_sets(list(reversed(docs)), cfg, tmp_path / "b", seed=3)
    assert first == second
    assert first["counts"]["glossary"] == 2 and first["counts"]["qa_gen"] == 2
    for name in ("glossary", "qa_mc", "qa_gen", "heldout_text"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_text() == (
            tmp_path / "b" / f"{name}.jsonl"
        ).read_text()


def test_heldout_choice_is_stable_when_documents_are_added(tmp_path):
    cfg = EvalSetsConfig(heldout_fraction=0.2, max_heldout_docs=40)
    small = build_eval_sets(_docs(30), cfg, tmp_path / "small")
    large = build_eval_sets(_docs(60), cfg, tmp_path / "large")
    assert set(small["excluded_doc_ids"]) <= set(large["excluded_doc_ids"])


def test_missing_glossary_or_faq_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="lacks glossary"):
        build_eval_sets(_docs()[1:], EvalSetsConfig(), tmp_path / "eval")
    with pytest.raises(ValueError, match="lacks FAQ"):
        build_eval_sets([_docs()[0]], EvalSetsConfig(), tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_real_python_docs_glossary_and_faq():
    sources = demo_seed.find_python_docs()
    assert sources is not None, "python3-doc is missing: run scripts/setup.sh (apt-get install python3-doc)"
    terms = parse_glossary((sources / "glossary.rst.txt").read_text())
    assert len(terms) >= 100
    assert all(len(t["definition"]) >= 20 and ":term:" not in t["definition"] for t in terms)
    pairs = [p for f in sorted((sources / "faq").glob("*.rst.txt")) for p in parse_faq(f.read_text())]
    assert len(pairs) >= 100
    assert all(p["question"].endswith("?") and "``" not in p["answer"] for p in pairs)
    assert all(len(p["answer"]) <= 600 for p in pairs)


MODULE_DOC = """\
:mod:`{name}` --- Read and write {name} files in several useful formats
========================================================================

.. module:: {name}
   :synopsis: Read and write {name} files in several useful formats.

This module provides the functions that read and write {name} files, in a way that is portable across
every platform Python supports.
"""


def test_module_synopses_join_the_glossary_and_leave_training_data(tmp_path):
    docs = _docs(4) + [
        make_document("d1", f"library/mod{i}.rst", MODULE_DOC.format(name=f"mod{i}")) for i in range(12)
    ]
    cfg = EvalSetsConfig(synopsis_fraction=0.5, max_general_docs=0)
    manifest = build_eval_sets(docs, cfg, tmp_path / "eval")
    glossary = load_eval_sets(tmp_path / "eval")["glossary"]
    modules = [g for g in glossary if g["kind"] == "module"]
    assert 2 <= len(modules) <= 10  # a stable-hash half of the 12 modules
    assert modules[0]["definition"].startswith("Read and write mod")
    assert modules[0]["paraphrase"].startswith("This module provides the functions")
    assert set(manifest["heldout_synopses"]) == {g["term"] for g in modules}
    view = {d["source"]: d["text"] for d in training_view(docs, manifest)}
    excluded_sources = {d["source"] for d in docs if d["id"] in manifest["excluded_doc_ids"]}
    for i in range(12):
        if f"library/mod{i}.rst" in excluded_sources:  # held out whole for perplexity
            continue
        held = f"mod{i}" in manifest["heldout_synopses"]
        text = view[f"library/mod{i}.rst"]
        assert (":synopsis:" in text) is not held  # taught or tested, never both
        assert ("several useful formats" in text) is not held  # the title repeating it is cut too
        assert text.startswith(f":mod:`mod{i}`")
        assert "This module provides" in view[f"library/mod{i}.rst"]
    assert "glossary.rst" not in view  # documents eval items came from stay out entirely


def test_man_pages_become_plain_text(tmp_path):
    troff = (
        '.\\" a comment\n.TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH DESCRIPTION\n'
        ".PP\nList information about the \\fBFILEs\\fR (the current directory by default).\n"
        ".TP\n\\fB\\-a\\fR, \\fB\\-\\-all\\fR\ndo not ignore entries starting with .\n"
    )
    text = man_to_text(troff)
    assert "comment" not in text and "\\f" not in text and ".TH" not in text
    assert "ls - list directory contents" in text and "Description." in text
    assert "List information about the FILEs (the current directory by default)." in text
    assert "-a, --all" in text
    folder = tmp_path / "general"
    folder.mkdir()
    for i in range(3):
        (folder / f"page{i}.txt").write_text(f"Page {i}. " + "Everyday words about gardens and rivers. " * 30)
    (folder / "short.txt").write_text("too short")
    rows = general_text_rows(str(folder), max_docs=5, max_chars=300)
    assert len(rows) == 3 and all(len(r["text"]) <= 300 for r in rows)
    assert general_text_rows(str(tmp_path / "missing"), 5, 300) == []


def test_installed_man_pages_give_general_text():
    rows = general_text_rows("man", max_docs=5, max_chars=2000)
    assert len(rows) == 5, "no man pages under /usr/share/man/man1: the forgetting check needs general text"
    assert len({r["source"].split("/")[-1].split("_")[0] for r in rows}) == 5  # one page per tool family

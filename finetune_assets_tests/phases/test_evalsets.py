"""eval_sets phase: glossary and FAQ parsing, multiple choice, held-out selection, files on disk."""

import json

import pytest

from finetune_assets.config import EvalSetsConfig
from finetune_assets.phases import corpus
from finetune_assets.phases.corpus import make_document
from finetune_assets.phases.evalsets import (
    build_eval_sets,
    eval_texts,
    load_eval_sets,
    parse_faq,
    parse_glossary,
)

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
    cfg = EvalSetsConfig(mc_choices=3, heldout_fraction=0.2, max_heldout_docs=3, max_heldout_chars=100)
    manifest = build_eval_sets(docs, cfg, tmp_path / "eval", seed=1)
    sets = load_eval_sets(tmp_path / "eval")
    assert sets["manifest"] == json.loads(json.dumps(manifest))
    assert manifest["counts"] == {"glossary": 3, "qa_mc": 3, "qa_gen": 3, "heldout_text": 3, "tool_use": 24}
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
    sources = corpus.find_python_docs()
    assert sources is not None, "python3-doc is missing: run scripts/setup.sh (apt-get install python3-doc)"
    terms = parse_glossary((sources / "glossary.rst.txt").read_text())
    assert len(terms) >= 100
    assert all(len(t["definition"]) >= 20 and ":term:" not in t["definition"] for t in terms)
    pairs = [p for f in sorted((sources / "faq").glob("*.rst.txt")) for p in parse_faq(f.read_text())]
    assert len(pairs) >= 100
    assert all(p["question"].endswith("?") and "``" not in p["answer"] for p in pairs)
    assert all(len(p["answer"]) <= 600 for p in pairs)

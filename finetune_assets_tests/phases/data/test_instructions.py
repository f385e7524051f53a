"""instructions phase: offline generators, eval exclusion, dedup, decontamination, topic split, cap."""

import json

import pytest

from finetune_assets.config import EvalSetsConfig, InstructionsConfig
from finetune_assets.phases.data import demo_seed
from finetune_assets.phases.data.corpus import make_document
from finetune_assets.phases.data.evalsets import build_eval_sets
from finetune_assets.phases.data.instructions import (
    allot_by_share,
    api_examples,
    assign_splits,
    build_instruction_set,
    cap_by_generator,
    module_examples,
    section_examples,
    topic_of,
)

API_DOC = """\
:mod:`shelfy` --- Shelf storage
===============================

.. module:: shelfy
   :synopsis: Keep Python objects on a shelf.

**Source code:** :source:`Lib/shelfy.py`

This module stores arbitrary Python objects in a persistent dictionary-like shelf on disk.

.. function:: open(filename, flag='c', \\
                   protocol=None)

   Open a persistent dictionary.  The *filename* is the base name of the
   underlying database, as used by :func:`dbm.open`.

   .. versionchanged:: 3.10
      Accepts a path-like object.

.. class:: Shelf(dict)

   A subclass of :class:`collections.abc.MutableMapping` which stores pickled values.

   .. method:: sync()

      Write back all entries in the cache and empty it when the shelf was opened
      with writeback enabled.

   .. method:: tiny()

      Short.
"""

GLOSSARY = """\
Glossary
========

.. glossary::

   shelf
      A persistent dictionary-like object whose values are arbitrary Python objects kept on disk.
"""

FAQ = """\
FAQ
===

How do I keep objects on disk between runs of my program?
---------------------------------------------------------

Use a shelf: it maps string keys to pickled Python objects stored in a database file on disk.
"""

SECTIONS = """\
Storage Guide
=============

Choosing a format
-----------------

Pick the format that matches how the data will be read back later, and keep a schema next to the data files.

Backups
-------

Copy the database file only while no process has it open, otherwise the copy may be corrupted halfway.
"""


def _section_doc(drop: str, source: str, title: str) -> dict:
    text = f"{title}\n{'=' * len(title)}\n\nTopic {title} Part\n---------------\n\n"
    text += (
        f"The {title} part explains how {title} relates to the rest of the system, step by step, in detail."
    )
    return make_document(drop, source, text)


FILLER = make_document("d0", "filler.txt", "Held-out filler text for the perplexity set. " * 10)


def _eval_dir(tmp_path, docs):
    """Eval sets from the glossary/FAQ docs plus one filler document, which is then the only held-out
    document: the test documents' fate does not depend on their hash."""
    eval_docs = [d for d in docs if d["source"] == "glossary.rst" or d["source"].startswith("faq/")]
    build_eval_sets(eval_docs + [FILLER], EvalSetsConfig(mc_choices=2), tmp_path / "eval")
    return tmp_path / "eval"


def _base_docs() -> list[dict]:
    return [
        make_document("d1", "glossary.rst", GLOSSARY),
        make_document("d1", "faq/general.rst", FAQ),
        make_document("d1", "faq/more.rst", FAQ.replace("between runs of my program", "forever")),
        make_document("d1", "library/shelfy.rst", API_DOC),
        make_document("d1", "howto/storage.rst", SECTIONS),
    ]


def test_api_examples_qualify_names_and_skip_short_descriptions():
    examples = dict(api_examples(API_DOC))
    assert list(examples) == [
        "What does the function `shelfy.open(filename, flag='c', protocol=None)` do in Python?",
        "What does the class `shelfy.Shelf(dict)` do in Python?",
        "What does the function `shelfy.Shelf.sync()` do in Python?",
    ]
    first = examples["What does the function `shelfy.open(filename, flag='c', protocol=None)` do in Python?"]
    assert first == (
        "Open a persistent dictionary. The filename is the base name of the underlying database, "
        "as used by dbm.open."
    )


def test_module_and_section_examples():
    ((prompt, answer),) = module_examples(API_DOC)
    assert prompt == "What is the shelfy module for?"
    assert answer.startswith("The shelfy module: Keep Python objects on a shelf. This module stores")
    sections = dict(section_examples(SECTIONS, "Storage Guide"))
    assert list(sections) == [
        "Explain Choosing a format (from Storage Guide).",
        "Explain Backups (from Storage Guide).",
    ]


def test_topic_of():
    assert topic_of("library/json.rst") == "library/json"
    assert topic_of("glossary.rst") == "glossary"
    assert topic_of("c-api/sub/obj.html") == "c-api/obj"
    assert topic_of("data.jsonl#L3") == "data"


def test_build_excludes_eval_docs_dedups_and_decontaminates(tmp_path):
    docs = _base_docs()
    leaking = "Leak\n====\n\nStorage\n-------\n\n" + FAQ.split("\n\n")[-1]  # copies the FAQ answer
    docs.append(make_document("d1", "howto/leak.rst", leaking))
    docs.append(make_document("d2", "howto/storage-copy.rst", SECTIONS))  # duplicate instructions
    eval_dir = _eval_dir(tmp_path, docs)
    result = build_instruction_set(docs, eval_dir, InstructionsConfig(system_prompt="Be brief."))
    records, stats = result.records, result.stats
    eval_ids = {d["id"] for d in docs[:3]}
    assert not {r["source"] for r in records} & eval_ids
    assert stats["excluded_docs"] == 3
    assert stats["contaminated_removed"] == 1
    assert stats["near_duplicates_removed"] == 2
    assert stats["generated"] == {"api": 3, "module": 1, "section": 6}  # 1 + 2 + 2 copies + 1 leak
    assert len(records) == 10 - 3 == stats["train"] + stats["validation"]
    assert stats["train"] > 0 and stats["validation"] > 0
    for rec in records:
        assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
        assert set(rec) == {"id", "messages", "source", "topic", "generator", "split"}
    assert len({r["id"] for r in records}) == len(records)


def test_split_is_by_topic_and_cap_samples_topics(tmp_path):
    docs = _base_docs()[:3] + [_section_doc("d1", f"library/mod{i}.rst", f"Mod{i}") for i in range(20)]
    eval_dir = _eval_dir(tmp_path, docs)
    full = build_instruction_set(docs, eval_dir, InstructionsConfig(validation_fraction=0.2)).records
    split_of = {}
    for rec in full:
        assert split_of.setdefault(rec["topic"], rec["split"]) == rec["split"]
    assert set(split_of.values()) == {"train", "validation"}
    capped = build_instruction_set(docs, eval_dir, InstructionsConfig(max_examples=10))
    assert len(capped.records) == 10 and capped.stats["capped_removed"] == len(full) - 10
    assert len({r["topic"] for r in capped.records}) == 10  # one per topic, not the first documents
    again = build_instruction_set(docs, eval_dir, InstructionsConfig(max_examples=10))
    assert again.records == capped.records


def test_allot_by_share_gives_what_a_small_group_cannot_use_to_the_others():
    assert allot_by_share(10, {"a": 0.5, "b": 0.5}, {"a": 2, "b": 100}) == {"a": 2, "b": 8}
    even = allot_by_share(7, {"a": 1, "b": 1, "c": 1}, {"a": 9, "b": 9, "c": 9})
    assert sum(even.values()) == 7 and set(even.values()) <= {2, 3}
    assert allot_by_share(50, {"a": 1, "b": 0}, {"a": 4, "b": 9}) == {"a": 4, "b": 0}  # share 0: none


def _rows(generator: str, topics: int, per_topic: int) -> list[dict]:
    return [
        {"id": f"{generator}-{t}-{i}", "generator": generator, "topic": f"library/m{t}"}
        for t in range(topics)
        for i in range(per_topic)
    ]


def test_generator_shares_keep_each_generators_part_of_the_cap():
    # One module row per page beside ten API rows per page: an even sample over topics keeps a few
    # module rows by chance; shares keep exactly the asked part, and unnamed generators fill the rest.
    records = _rows("module_definition", 10, 1) + _rows("api_definition", 10, 10) + _rows("section", 10, 2)
    by_topic = cap_by_generator(records, 10, None)
    assert len(by_topic) == 10 and len({r["topic"] for r in by_topic}) == 10
    shared = cap_by_generator(records, 10, {"module_definition": 0.6, "api_definition": 0.4})
    assert [r["generator"] for r in shared].count("module_definition") == 6
    assert [r["generator"] for r in shared].count("api_definition") == 4
    most = cap_by_generator(records, 20, {"module_definition": 0.9})
    gens = [r["generator"] for r in most]
    assert gens.count("module_definition") == 10 and len(most) == 20  # all it has; the rest shared
    assert most == [r for r in records if r in most]  # original order
    assert cap_by_generator(records, None, {"section": 1.0}) == records


def test_build_applies_generator_shares_to_the_cap(tmp_path):
    docs = _base_docs()
    eval_dir = _eval_dir(tmp_path, docs)
    cfg = InstructionsConfig(max_examples=3, generator_shares={"section": 1.0})
    result = build_instruction_set(docs, eval_dir, cfg)
    assert [r["generator"] for r in result.records] == ["section"] * 3


def test_assign_splits_guarantees_both_sides():
    records = [{"topic": t, "split": "train"} for t in ("a", "b")]
    assign_splits(records, validation_fraction=0.01)
    assert sorted(r["split"] for r in records) == ["train", "validation"]


def test_no_surviving_instruction_is_a_clear_error(tmp_path):
    docs = _base_docs()[:3] + [make_document("d1", "notes.txt", "plain text without any heading " * 20)]
    eval_dir = _eval_dir(tmp_path, docs)
    with pytest.raises(ValueError, match="no instructions survived"):
        build_instruction_set(docs, eval_dir, InstructionsConfig())


def test_real_json_docs_yield_api_and_module_examples():
    sources = demo_seed.find_python_docs()
    assert sources is not None, "python3-doc is missing: run scripts/setup.sh (apt-get install python3-doc)"
    text = (sources / "library/json.rst.txt").read_text()
    prompts = [p for p, _ in api_examples(text)]
    assert any(p.startswith("What does the function `json.dumps(obj, *, skipkeys=False") for p in prompts)
    assert "What does the function `json.JSONDecoder.decode(s)` do in Python?" in prompts
    assert len(prompts) >= 10
    modules = [p for p, _ in module_examples(text)]
    assert modules == ["What is the json module for?", "What is the json.tool module for?"]


def test_imported_records_go_first_and_pass_the_same_dedup_and_decontamination(tmp_path):
    docs = _base_docs()
    eval_dir = _eval_dir(tmp_path, docs)
    extracted = build_instruction_set(docs, eval_dir, InstructionsConfig()).records
    copy = {**extracted[0], "id": "seed-copy", "generator": "seed:alpaca", "source": "seed:s.jsonl"}
    leak = {
        "id": "seed-leak",
        "messages": [
            {"role": "user", "content": "Tell me"},
            {"role": "assistant", "content": FAQ.split("\n\n")[-1]},
        ],
        "source": "seed:s.jsonl",
        "topic": "seed:s",
        "generator": "seed:alpaca",
        "split": "train",
    }
    result = build_instruction_set(docs, eval_dir, InstructionsConfig(), extra={"seed:s.jsonl": [copy, leak]})
    ids = {r["id"] for r in result.records}
    assert "seed-copy" in ids and extracted[0]["id"] not in ids  # the imported copy wins
    assert "seed-leak" not in ids and result.stats["contaminated_by_source"] == {"seed:alpaca": 1}
    assert result.stats["generated"]["seed:s.jsonl"] == 2


def test_only_the_configured_extractors_run(tmp_path):
    docs = _base_docs()
    result = build_instruction_set(docs, _eval_dir(tmp_path, docs), InstructionsConfig(generators=["api"]))
    assert result.stats["generated"] == {"api": 3}
    assert {r["generator"] for r in result.records} == {"api"}


def test_imported_seeds_are_not_capped(tmp_path):
    docs = _base_docs()
    seeds = [
        {
            "id": f"seed-{i}",
            "messages": [
                {"role": "user", "content": f"Question {i} about {w}?"},
                {"role": "assistant", "content": f"{w} answer."},
            ],
            "source": "seed:s.jsonl",
            "topic": f"seed:s/{i % 3}",
            "generator": "seed:alpaca",
            "split": "train",
        }
        for i, w in enumerate(["apples", "rivers", "castles", "compilers"])
    ]
    result = build_instruction_set(
        docs, _eval_dir(tmp_path, docs), InstructionsConfig(max_examples=6), extra={"s": seeds}
    )
    generators = [r["generator"] for r in result.records]
    assert generators.count("seed:alpaca") == 4 and len(generators) == 6


def test_definition_prompts_are_the_scorecards():
    from finetune_assets.phases.data import instructions
    from finetune_assets.phases.evaluation import hallucination

    assert instructions.TERM_PROMPT == hallucination.DEFINITION_PROMPT
    assert instructions.MODULE_PROMPT == hallucination.MODULE_PROMPT


def test_definition_and_lookup_generators_name_the_subject_first():
    from finetune_assets.phases.data.instructions import (
        api_definition_examples,
        api_lookup_examples,
        module_definition_examples,
        module_lookup_examples,
    )

    defs = dict(api_definition_examples(API_DOC))
    assert defs["In Python, what does `shelfy.open` do? Answer in one or two sentences."] == (
        "`shelfy.open` opens a persistent dictionary. The filename is the base name of the underlying "
        "database, as used by dbm.open."
    )
    assert defs["In Python, what does the term 'shelfy.Shelf' mean? Answer in one or two sentences."] == (
        "`shelfy.Shelf` is a subclass of collections.abc.MutableMapping which stores pickled values."
    )
    lookups = dict(api_lookup_examples(API_DOC))
    assert lookups["In Python, which function opens a persistent dictionary?"] == (
        "`shelfy.open` opens a persistent dictionary."
    )
    answer = "The `shelfy` module keeps Python objects on a shelf."
    assert list(module_definition_examples(API_DOC)) == [
        ("In Python, what is the shelfy module for? Answer in one sentence.", answer)
    ]
    assert list(module_lookup_examples(API_DOC)) == [
        ("Which Python module keeps Python objects on a shelf?", answer)
    ]


DEFINITION_GENERATORS = ["api_definition", "module_definition", "api_lookup", "module_lookup"]


def test_definition_generators_skip_heldout_terms_and_stripped_synopses(tmp_path):
    docs = _base_docs()
    eval_dir = _eval_dir(tmp_path, docs)
    result = build_instruction_set(docs, eval_dir, InstructionsConfig(generators=DEFINITION_GENERATORS))
    stats = result.stats
    # The glossary holds out "shelf": `shelfy.Shelf` (its last dotted part) is never asked about.
    assert stats["heldout_subject_removed"] == {"api_definition": 1, "api_lookup": 1}
    assert stats["generated"] == {
        "api_definition": 2,
        "module_definition": 1,
        "api_lookup": 2,
        "module_lookup": 1,
    }
    assert not any("Shelf`" in r["messages"][-1]["content"].split(" ")[0] for r in result.records)
    # A held-out synopsis is stripped by the training view, so its module is neither defined nor looked up.
    manifest = json.loads((eval_dir / "manifest.json").read_text())
    manifest["heldout_synopses"] = {"shelfy": "Keep Python objects on a shelf."}
    (eval_dir / "manifest.json").write_text(json.dumps(manifest))
    again = build_instruction_set(docs, eval_dir, InstructionsConfig(generators=DEFINITION_GENERATORS))
    assert again.stats["generated"]["module_definition"] == 0 == again.stats["generated"]["module_lookup"]


def test_safety_rows_join_uncapped_split_per_item_and_counted(tmp_path):
    docs = _base_docs()
    eval_dir = _eval_dir(tmp_path, docs)
    cfg = InstructionsConfig(safety=True, safety_max_examples=40, max_examples=45, validation_fraction=0.2)
    result = build_instruction_set(docs, eval_dir, cfg)
    rows = [r for r in result.records if r["generator"] == "safety"]
    assert len(rows) == 40 == result.stats["generated"]["safety"]
    assert len(result.records) == 45  # max_examples counts them; the cap trims only generated rows
    assert {r["split"] for r in rows} == {"train", "validation"}
    kinds = {r["messages"][-1]["content"].startswith(("I ", "Sorry")) for r in rows}
    assert kinds == {True, False}  # refusals and helpful answers both present
    off = build_instruction_set(docs, eval_dir, InstructionsConfig())
    assert "safety" not in off.stats["generated"]


def test_demo_recipe_turns_on_the_new_generators_and_safety():
    from finetune_assets.recipe import load_profile

    for name in ("demo", "smoke"):
        profile = load_profile(name)
        assert set(DEFINITION_GENERATORS) <= set(profile.instructions.generators)
        assert profile.instructions.safety and profile.preferences.safety

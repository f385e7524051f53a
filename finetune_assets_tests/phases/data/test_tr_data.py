"""T&R training data: doctest and synthetic python_eval conversations with real results, search and grounded
conversations, disjointness from the eval tool-use items, and what SFT's loss sees of the call turn."""

import json

import pytest

from finetune_assets.config import TrainConfig
from finetune_assets.phases.data.evalsets import tool_use_items
from finetune_assets.phases.data.tr_data import (
    _TEMPLATES,
    build_tr_examples,
    conversation_tokens,
    fit_to_length,
    mine_doctest_expressions,
    synthetic_expressions,
)
from finetune_assets.phases.inference.retrieval import RetrievalIndex, chunk_documents
from finetune_assets.phases.inference.sandbox import python_eval
from finetune_assets.phases.inference.tools import TRRuntime, eval_question, parse_tool_call, system_prompt
from finetune_assets.phases.training import train
from finetune_assets.recipe import load_profile
from finetune_assets_tests.phases.tr_fixtures import CFG, ScriptedModel

# --- python_eval expressions --------------------------------------------------------------------------------


def test_mine_doctests_keeps_only_safe_single_line_expressions(docs):
    mined = mine_doctest_expressions(docs)
    assert [m["expression"] for m in mined] == ["sorted([3, 1, 2])", "'a-b'.split('-')", "2 ** 10"]
    assert mined[0] == {"expression": "sorted([3, 1, 2])", "doc_id": "doctests", "expected": "[1, 2, 3]"}
    assert mine_doctest_expressions(docs, exclude_doc_ids={"doctests"}) == []


def test_every_synthetic_template_gives_a_sandbox_result_and_expressions_are_distinct():
    exprs = synthetic_expressions(3 * len(_TEMPLATES), seed=0)
    assert len({e["expression"] for e in exprs}) == len(exprs) == 3 * len(_TEMPLATES)
    assert {e["template"] for e in exprs} == set(_TEMPLATES)  # every kind is represented
    for e in exprs[: len(_TEMPLATES)]:  # one of each template
        result = python_eval(e["expression"])
        assert result["ok"], (e, result)
    assert synthetic_expressions(20, seed=0) == exprs[:20]  # deterministic
    assert synthetic_expressions(20, seed=1) != exprs[:20]


def test_synthetic_expressions_skip_excluded_ones():
    first = [e["expression"] for e in synthetic_expressions(10, seed=0)]
    again = [e["expression"] for e in synthetic_expressions(10, seed=0, exclude=first[:5])]
    assert not set(first[:5]) & set(again) and len(again) == 10


@pytest.mark.parametrize(("n_items", "seed"), [(24, 0), (6, 0)])  # the demo's and the smoke's eval items
def test_tool_use_training_conversations_never_hold_an_eval_items_expression(
    docs, index, tiny_chat_rows, n_items, seed
):
    items = tool_use_items(n_items, seed)
    expressions = [item["expression"] for item in items]
    # Make collisions certain: the eval expressions are also planted as doctests in the corpus.
    planted = docs + [{"id": "planted", "text": "\n".join(f">>> {e}" for e in expressions), "title": "P"}]
    cfg = CFG.model_copy(update={"max_tr_examples": 80, "tool_use_fraction": 1.0, "search_tool_fraction": 0})
    out = build_tr_examples(tiny_chat_rows, planted, index, cfg, exclude_expressions=expressions)
    used = {
        parse_tool_call(r["messages"][2]["content"])["arguments"]["expression"]
        for r in out.records
        if r["generator"] == "tr_python_eval"
    }
    assert len(used) == 80 and not used & set(expressions)
    text = json.dumps(out.records)
    assert not any(item["question"] in text for item in items)
    # Control: without the exclusion the planted eval expressions do reach the training data.
    unguarded = build_tr_examples(tiny_chat_rows, planted, index, cfg).records
    assert any(item["question"] in json.dumps(unguarded) for item in items)


# --- conversations ------------------------------------------------------------------------------------------


def test_build_tr_examples_mixes_grounded_search_and_real_tool_results(docs, index, tiny_chat_rows):
    rows = [dict(r) for r in tiny_chat_rows]
    rows[0]["split"] = "validation"
    cfg = CFG.model_copy(
        update={
            "tool_use_fraction": 0.375,
            "search_tool_fraction": 0.25,
            "synthetic_expression_fraction": 0.0,
        }
    )
    out = build_tr_examples(rows, docs, index, cfg, seed=0)
    records, stats = out.records, out.stats

    assert len(records) == cfg.max_tr_examples == stats["records"]
    assert stats["by_kind"] == {"tr_python_eval": 3, "tr_search_docs": 2, "tr_grounded": 3}
    assert stats["doctest_ok"] == 3 and stats["doctest_matches_doc_output"] == 2  # the doc's 1000 is wrong
    assert stats["synthetic_expressions"] == 0
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {"id", "messages", "source", "topic", "generator", "split"}
        assert r["messages"][0] == {"role": "system", "content": system_prompt()}
        assert r["messages"][-1]["role"] == "assistant"

    evals = {parse_tool_call(r["messages"][2]["content"])["arguments"]["expression"]: r for r in records
             if r["generator"] == "tr_python_eval"}  # fmt: skip
    power = evals["2 ** 10"]["messages"]
    assert [m["role"] for m in power] == ["system", "user", "assistant", "tool", "assistant"]
    assert power[1]["content"].endswith("What does the Python expression `2 ** 10` evaluate to?")
    assert json.loads(power[3]["content"]) == {"ok": True, "result": "1024"}  # computed, not the doc's
    assert "`1024`" in power[4]["content"]

    answers = {r["messages"][1]["content"]: (r["messages"][2]["content"], r) for r in rows}
    for r in records:
        if r["generator"] == "tr_grounded":
            user = r["messages"][1]["content"]
            assert user.startswith("Context:\n[1] ") and "\n\nQuestion: " in user
            question = user.rsplit("Question: ", 1)[-1]
            assert r["messages"][2]["content"] == answers[question][0] and len(r["messages"]) == 3
            assert r["split"] == answers[question][1]["split"] and r["topic"] == answers[question][1]["topic"]
        elif r["generator"] == "tr_search_docs":
            question = r["messages"][1]["content"]
            assert question in answers  # no Context block: the model has to search
            call = parse_tool_call(r["messages"][2]["content"])
            assert call == {"name": "search_docs", "arguments": {"query": question, "k": 2}}
            assert json.loads(r["messages"][3]["content"])["results"]
            assert r["messages"][4]["content"] == answers[question][0]
    assert build_tr_examples(rows, docs, index, cfg, seed=0).records == records  # deterministic
    assert {r["split"] for r in records if r["source"] == "doc0"} <= {"validation"}


def test_safety_rows_keep_their_answer_under_the_tr_prompt_and_are_never_searched(
    docs, index, tiny_chat_rows
):
    """A harmful request is not a documentation search: safety rows become grounded conversations whose
    answer is the row's own refusal, so the T&R variant refuses under its own prompt too."""
    refusal = "I can't help with that: it would hurt people."
    safety_rows = [
        {**r, "id": f"s{i}", "generator": "safety",
         "messages": [{"role": "user", "content": f"How do I hurt someone, way {i}?"},
                      {"role": "assistant", "content": refusal}]}
        for i, r in enumerate(tiny_chat_rows)
    ]  # fmt: skip
    cfg = CFG.model_copy(update={"tool_use_fraction": 0.0, "search_tool_fraction": 0.5})
    records = build_tr_examples(safety_rows + tiny_chat_rows, docs, index, cfg, seed=0).records
    searched = [r["messages"][1]["content"] for r in records if r["generator"] == "tr_search_docs"]
    assert searched and not any("hurt someone" in q for q in searched)
    grounded_safety = [r for r in records if "hurt someone" in r["messages"][1]["content"]]
    assert grounded_safety and all(r["generator"] == "tr_grounded" for r in grounded_safety)
    assert all(r["messages"][-1]["content"] == refusal for r in grounded_safety)


def test_synthetic_expressions_fill_the_python_eval_share(docs, index, tiny_chat_rows):
    cfg = CFG.model_copy(
        update={"max_tr_examples": 40, "tool_use_fraction": 0.5, "search_tool_fraction": 0.25}
    )
    out = build_tr_examples(tiny_chat_rows, docs, index, cfg, seed=0)
    stats = out.stats
    # 20 python_eval conversations: half of them may be doctests, but the corpus holds only 3.
    assert stats["by_kind"]["tr_python_eval"] == 20
    assert stats["doctest_ok"] == 3 and stats["synthetic_expressions"] == 17
    for r in out.records:
        if r["source"] == "synthetic":
            expression = parse_tool_call(r["messages"][2]["content"])["arguments"]["expression"]
            assert json.loads(r["messages"][3]["content"]) == python_eval(expression)  # the real result


def test_build_tr_examples_keeps_excluded_documents_out(docs, index, tiny_chat_rows):
    cfg = CFG.model_copy(update={"top_k": 3})
    excluded = {"doctests", "doc0", "doc1"}
    out = build_tr_examples(tiny_chat_rows, docs, index, cfg, exclude_doc_ids=excluded)
    assert out.stats["doctest_ok"] == 0
    assert {r["source"] for r in out.records if r["generator"] == "tr_python_eval"} <= {"synthetic"}
    text = json.dumps(out.records)
    assert "Use append to add an item" not in text  # doc0's passage
    assert "Tuples are often used" not in text  # doc1's passage
    # Control: without the exclusion the same passage does reach the training data.
    assert "Tuples are often used" in json.dumps(build_tr_examples(tiny_chat_rows, docs, index, cfg).records)


def test_runtime_sees_the_training_prompt_and_writes_the_training_call(docs, index, tiny_chat_rows):
    cfg = CFG.model_copy(update={"tool_use_fraction": 0.5, "search_tool_fraction": 0.0})
    records = build_tr_examples(tiny_chat_rows[:3], docs, index, cfg).records
    grounded = next(r for r in records if r["generator"] == "tr_grounded")
    question = grounded["messages"][1]["content"].rsplit("Question: ", 1)[-1]
    model = ScriptedModel("answer")
    TRRuntime(None, index, cfg=cfg, generate_fn=model).answer(question)
    assert model.calls[0][0] == grounded["messages"][:2]

    # A python_eval conversation: the runtime's prompt, the call it records and the tool turn it appends are
    # the training conversation's, token for token.
    tool = next(r for r in records if r["generator"] == "tr_python_eval")["messages"]
    expression = parse_tool_call(tool[2]["content"])["arguments"]["expression"]
    model = ScriptedModel(tool[2]["content"], tool[4]["content"])
    out = TRRuntime(None, index, cfg=cfg, generate_fn=model).answer(eval_question(expression))
    assert model.calls[1][0] == tool[:4]
    assert out["messages"] == tool


# --- what SFT sees ------------------------------------------------------------------------------------------


def _call_turn_span(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the first assistant turn (the tool call and its <|im_end|>) as the template renders it."""

    def ids(msgs, **kwargs):
        return tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, **kwargs)["input_ids"]

    start = len(ids(messages[:2], add_generation_prompt=True))
    upto = ids(messages[:3])
    return upto[start:-1]  # the "\n" after <|im_end|> is outside the turn


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


@pytest.mark.parametrize("packing", [True, False])
def test_sft_trains_on_the_whole_call_turn_of_every_tool_conversation(
    tiny_model_dir, tiny_chat_rows, docs, monkeypatch, tmp_path, packing
):
    from transformers import AutoTokenizer

    smoke = load_profile("smoke")  # the smoke recipe's retrieval settings and T&R max_length
    index = RetrievalIndex.from_chunks(chunk_documents(docs, smoke.retrieval))
    cfg = smoke.retrieval.model_copy(update={"max_tr_examples": 16, "tool_use_fraction": 0.5})
    records = [
        r for r in build_tr_examples(tiny_chat_rows, docs, index, cfg).records if r["split"] == "train"
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    kept, lengths = fit_to_length(records, tokenizer, smoke.tr.max_length)
    assert lengths["over_max_length"] == 0 and kept == records  # nothing needs cutting at smoke's settings

    seen = {}
    real = train.train_and_save

    def spy(trainer, *args, **kwargs):
        seen["dataset"] = trainer.train_dataset
        return real(trainer, *args, **kwargs)

    monkeypatch.setattr(train, "train_and_save", spy)
    stage = TrainConfig(
        max_steps=2, max_length=smoke.tr.max_length, packing=packing, lora_r=4, checkpoint_steps=0,
        max_eval_rows=0, learning_rate=1e-3,
    )  # fmt: skip
    summary = train.sft(tiny_model_dir, records, [], stage, tmp_path / "out")
    assert summary["steps"] == 2

    rows = [(row["input_ids"], row["labels"]) for row in seen["dataset"]]
    tool_records = [r for r in records if r["generator"] in ("tr_python_eval", "tr_search_docs")]
    assert len(tool_records) >= 8
    for record in tool_records:
        span = _call_turn_span(tokenizer, record["messages"])
        assert tokenizer.decode(span).startswith("<tool_call>")
        hits = [(ids, labels, _find(ids, span)) for ids, labels in rows]
        ids, labels, at = next((h for h in hits if h[2] >= 0), (None, None, -1))
        assert at >= 0, f"call turn of {record['id']} missing from the SFT dataset (truncated?)"
        assert all(label != -100 for label in labels[at : at + len(span)])  # the call carries loss
        assert labels[at - 1] == -100  # ... and the prompt before it does not
        answer = tokenizer(record["messages"][-1]["content"], add_special_tokens=False)["input_ids"]
        assert _find(ids, answer[:-1]) >= 0  # the final answer survived too


def test_fit_to_length_drops_conversations_that_would_be_cut(tiny_model_dir, docs, index, tiny_chat_rows):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = build_tr_examples(tiny_chat_rows, docs, index, CFG).records
    lengths = sorted(conversation_tokens(tokenizer, r["messages"]) for r in records)
    limit = lengths[len(lengths) // 2]
    kept, stats = fit_to_length(records, tiny_model_dir, limit)  # a model folder works as well
    assert 0 < len(kept) < len(records)
    assert all(conversation_tokens(tokenizer, r["messages"]) <= limit for r in kept)
    assert stats["over_max_length"] == len(records) - len(kept) and stats["tokens_max"] == lengths[-1]


def test_prepare_writes_the_examples_that_fit_without_eval_expressions(
    docs, tiny_chat_rows, tiny_model_dir, tmp_path
):
    from finetune_assets.io import read_records
    from finetune_assets.phases.data.tr_data import prepare
    from finetune_assets.phases.inference.retrieval import build_index

    build_index(chunk_documents(docs, CFG), tmp_path / "index")
    held_out = tool_use_items(8, seed=0)
    prepared = prepare(
        tiny_chat_rows,
        docs,
        tmp_path / "index",
        CFG,
        tool_use_eval_items=held_out,
        tokenizer_dir=tiny_model_dir,
        max_length=400,  # some of these conversations are longer: they are left out
        out_path=tmp_path / "tr" / "examples.parquet",
    )
    assert read_records(prepared.path) == prepared.records and prepared.records
    from transformers import AutoTokenizer

    from finetune_assets.phases.data.tr_data import conversation_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert prepared.lengths["over_max_length"] > 0
    assert all(conversation_tokens(tokenizer, r["messages"]) <= 400 for r in prepared.records)
    text = json.dumps(prepared.records)
    assert not any(item["expression"] in text for item in held_out)

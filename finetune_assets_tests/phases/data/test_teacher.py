"""Teacher self-instruct, teacher answers and the judge: a scripted in-test client (the ChatClient protocol) for
exact replies, and one run through OpenAIChatClient against the real served tiny model."""

import json
import re

import pytest

from finetune_assets.config import LLMEndpointConfig
from finetune_assets.phases.data.instructions import topic_of
from finetune_assets.phases.data.teacher import (
    apply_judge,
    chosen_first,
    excerpt,
    judge_pairs,
    judge_prompt,
    parse_json_object,
    parse_teacher_reply,
    select_documents,
    teacher_answers,
    teacher_instructions,
)
from finetune_assets.phases.inference.llm import OpenAIChatClient
from finetune_assets_tests.phases.llm_server import served_model  # noqa: F401


class ScriptedClient:
    """ChatClient whose reply is ``reply(conversation)``; records what it was asked."""

    def __init__(self, reply):
        self.reply = reply
        self.asked: list[list[dict]] = []
        self.requests = self.cache_hits = self.failures = self.retries = 0

    def complete(self, conversations):
        self.asked += conversations
        self.requests += len(conversations)
        return [self.reply(conv) for conv in conversations]


def _docs(tiny_corpus) -> list[dict]:
    """The tiny corpus as documents in three source files (topics library/a, library/b, tutorial/c)."""
    sources = ["library/a.rst", "library/b.rst", "tutorial/c.rst"]
    return [
        {"id": f"d{i}", "text": text, "source": sources[i % 3], "drop": "d1", "title": f"Doc {i}"}
        for i, text in enumerate(tiny_corpus)
    ]


def _teacher_reply(conv: list[dict]) -> str | None:
    """Well-formed, fenced, chatty, broken, too short and failed replies, chosen by the excerpt's subject."""
    text = conv[-1]["content"]
    subject = re.search(r"<excerpt>\n(A \w+|The \w+ \w+|An \w+)", text)
    subject = subject.group(1) if subject else "It"
    if "tuple" in text:
        return "not json at all"
    if "dictionary" in text:
        return '{"question": "Why?", "answer": "ok"}'  # too short
    if "set is" in text:
        return None  # the request failed
    if "generator" in text:
        return 'Sure! ```json\n{"question": "What does the excerpt say?", "answer": "It says a lot of things."}\n```'
    if "decorator" in text:
        return f'Here you go:\n```json\n{{"Question": "What is {subject}?", "Answer": "{subject} is explained."}}\n```'
    return json.dumps(
        {"question": f"What can you tell me about {subject}?", "answer": f"{subject} is described."}
    )


def test_teacher_instructions_parse_and_count(tiny_corpus):
    docs = _docs(tiny_corpus)
    client = ScriptedClient(_teacher_reply)
    result = teacher_instructions(
        docs, client, max_documents=len(docs), system_prompt="You answer about Python."
    )
    stats = result.stats
    assert stats["documents"] == len(docs) and stats["requests"] == len(docs)
    # tuple -> unparseable; dictionary (too short) and generator ("the excerpt") -> rejected; set -> failed
    assert (stats["unparseable"], stats["rejected"], stats["failed"]) == (1, 2, 1)
    assert stats["parsed"] == len(docs) - 4 == len(result.records)
    by_source = {rec["source"]: rec for rec in result.records}
    decorator = by_source["d5"]  # code fence, text around it, capitalized keys
    assert decorator["messages"] == [
        {"role": "system", "content": "You answer about Python."},
        {"role": "user", "content": "What is A decorator?"},
        {"role": "assistant", "content": "A decorator is explained."},
    ]
    for rec in result.records:
        doc = docs[int(rec["source"][1:])]
        assert set(rec) == {"id", "messages", "source", "topic", "generator", "split"}
        assert rec["topic"] == topic_of(doc["source"]) and rec["generator"] == "teacher"
        assert rec["split"] == "train" and len(rec["id"]) == 16
    assert len({rec["id"] for rec in result.records}) == len(result.records)
    # the teacher saw each document's excerpt and was asked for strict JSON
    assert all('{"question": "...", "answer": "..."}' in conv[-1]["content"] for conv in client.asked)
    no_system = teacher_instructions(docs, ScriptedClient(_teacher_reply), max_documents=2)
    assert all(rec["messages"][0]["role"] == "user" for rec in no_system.records)


def test_documents_are_spread_over_sources_and_deterministic(tiny_corpus):
    docs = _docs(tiny_corpus) + [{"id": "short", "text": "Too short.", "source": "x/y.rst"}]
    picked = select_documents(docs, 3, seed=0)
    assert sorted(topic_of(d["source"]) for d in picked) == ["library/a", "library/b", "tutorial/c"]
    assert select_documents(docs, 3, seed=0) == picked
    assert [d["id"] for d in select_documents(docs, 100)] != [d["id"] for d in docs]  # shuffled, not in order
    assert len(select_documents(docs, 100)) == len(tiny_corpus)  # the short one is never picked
    seeds = {tuple(d["id"] for d in select_documents(docs, 3, seed=s)) for s in range(5)}
    assert len(seeds) > 1


def test_excerpt_of_a_long_document_is_one_section_under_the_limit():
    sections = [
        f"Section {i}\n=========\n\n" + f"Prose sentence number {i} about lists. " * 12 for i in range(8)
    ]
    doc = {"id": "long", "text": "\n\n".join(sections), "source": "library/long.rst"}
    assert len(doc["text"]) > 2000
    cut = excerpt(doc)
    assert cut.startswith("Section ") and 200 < len(cut) <= 2000 and cut == excerpt(doc)
    assert excerpt({"id": "s", "text": "  short text  ", "source": "s"}) == "short text"


def test_parsing_is_tolerant_but_strict_about_content():
    assert parse_json_object('x ```json\n{"a": 1, "b": 2}\n``` y', ["a", "b"]) == {"a": 1, "b": 2}
    assert parse_json_object('{"a": 1} then {"a": 2, "b": 3}', ["a", "b"]) == {"a": 2, "b": 3}
    assert parse_json_object('{"a": {"b": 1}}', ["b"]) == {"b": 1}  # a nested object is still an object
    assert parse_json_object("", ["a"]) is None and parse_json_object(None, ["a"]) is None
    assert parse_json_object('{"a": 1', ["a"]) is None
    good = '{"question": "How do I add an item to a list?", "answer": "Call append on the list."}'
    assert parse_teacher_reply(good) == ("How do I add an item to a list?", "Call append on the list.")
    assert parse_teacher_reply('{"question": 3, "answer": "x"}') == "unparseable"
    assert parse_teacher_reply('{"question": "", "answer": "Call append on the list."}') == "rejected"


def test_teacher_instructions_through_the_served_model(served_model, tmp_path, tiny_corpus):  # noqa: F811
    """The real endpoint babbles: every reply is counted unparseable, nothing crashes, a rerun is cached."""
    docs = _docs(tiny_corpus)
    cfg = LLMEndpointConfig(base_url=served_model.base_url, model="tiny", api_key_env=None, max_tokens=8)
    client = OpenAIChatClient(cfg, tmp_path)
    result = teacher_instructions(docs, client, max_documents=4)
    assert result.records == []
    assert result.stats == {
        "documents": 4,
        "parsed": 0,
        "unparseable": 4,
        "rejected": 0,
        "failed": 0,
        "requests": 4,
        "cache_hits": 0,
    }
    rerun = teacher_instructions(docs, OpenAIChatClient(cfg, tmp_path), max_documents=4)
    assert rerun.stats["requests"] == 0 and rerun.stats["cache_hits"] == 4


def test_teacher_answers_strip_and_mark_blanks():
    replies = iter(["  A list is a sequence.  ", "   ", None])
    client = ScriptedClient(lambda conv: next(replies))
    prompts = [[{"role": "user", "content": q}] for q in ("a?", "b?", "c?")]
    assert teacher_answers(prompts, client) == ["A list is a sequence.", None, None]
    assert client.asked == prompts and teacher_answers([], client) == []


# ------------------------------------------------------------------------------------------------- judge


def _pairs(n: int) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": f"GOOD answer {i}",
            "rejected": f"weak answer {i}",
        }
        for i in range(n)
    ]


def _judge_prefers(word: str):
    """A judge that gives 9 to the answer containing ``word`` and 3 to the other, wherever it is shown."""

    def reply(conv):
        text = conv[-1]["content"]
        a = re.search(r"<answer_a>\n(.*?)\n</answer_a>", text, re.S).group(1)
        return json.dumps({"score_a": 9 if word in a else 3, "score_b": 3 if word in a else 9})

    return reply


def test_position_randomization_is_deterministic_and_balanced():
    pairs = _pairs(40)
    order = [chosen_first(p) for p in pairs]
    assert order == [chosen_first(dict(p)) for p in pairs]
    assert 10 <= sum(order) <= 30  # both positions are used
    for pair, first in zip(pairs, order, strict=True):
        text = judge_prompt(pair)[-1]["content"]
        assert (text.index(pair["chosen"]) < text.index(pair["rejected"])) == first
        assert judge_prompt(pair) == judge_prompt(dict(pair))
    unnamed = {k: v for k, v in pairs[0].items() if k != "id"}  # no id: the content fixes the order
    assert chosen_first(unnamed) == chosen_first(dict(unnamed))


def test_judge_maps_scores_back_through_the_shuffle():
    pairs = _pairs(12)
    assert {chosen_first(p) for p in pairs} == {True, False}
    verdicts = judge_pairs(pairs, ScriptedClient(_judge_prefers("GOOD")))
    assert verdicts == [{"chosen_score": 9.0, "rejected_score": 3.0}] * 12
    verdicts = judge_pairs(pairs, ScriptedClient(_judge_prefers("weak")))
    assert verdicts == [{"chosen_score": 3.0, "rejected_score": 9.0}] * 12


def test_apply_judge_drops_pairs_where_chosen_does_not_win():
    pairs = _pairs(6)
    replies = {
        "Question 0?": '{"score_a": 8, "score_b": 8}',  # tie: dropped
        "Question 1?": "I think A is better.",  # unparseable: kept, unjudged
        "Question 2?": '{"score_a": 11, "score_b": 2}',  # out of range: unjudged
        "Question 3?": None,  # request failed: unjudged
    }

    def reply(conv):
        question = re.search(r"USER: (Question \d\?)", conv[-1]["content"]).group(1)
        if question in replies:
            return replies[question]
        return _judge_prefers("GOOD" if question == "Question 4?" else "weak")(conv)

    verdicts = judge_pairs(pairs, ScriptedClient(reply))
    assert verdicts[0] == {"chosen_score": 8.0, "rejected_score": 8.0}
    assert verdicts[1] is None and verdicts[2] is None and verdicts[3] is None
    assert verdicts[4] == {"chosen_score": 9.0, "rejected_score": 3.0}
    assert verdicts[5] == {"chosen_score": 3.0, "rejected_score": 9.0}
    kept, stats = apply_judge(pairs, verdicts)
    assert stats == {"pairs": 6, "judged": 3, "kept": 4, "dropped_not_winning": 2, "unjudged": 3}
    assert [(r["id"], r["judge_score"]) for r in kept] == [
        ("p1", None),
        ("p2", None),
        ("p3", None),
        ("p4", 6.0),
    ]
    assert "judge_score" not in pairs[4]  # inputs are not modified
    with pytest.raises(ValueError, match="verdicts"):
        apply_judge(pairs, verdicts[:2])

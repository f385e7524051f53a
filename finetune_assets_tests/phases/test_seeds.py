"""seeds phase: seed instruction import (five formats) and human feedback import, with quarantine."""

import json
from pathlib import Path

import pytest

from finetune_assets.io import read_jsonl
from finetune_assets.phases.preferences import check_pairs
from finetune_assets.phases.seeds import load_feedback_file, load_seed_file, parse_label, write_quarantine

ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
DOLLY = {
    "instruction": "Summarize.",
    "context": "A long text.",
    "response": "Short.",
    "category": "summarization",
}
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be terse."},
        {"from": "human", "value": "Hi?"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Bye?"},
        {"from": "gpt", "value": "Bye."},
    ]
}
OPENAI = {
    "messages": [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}
PROMPT_COMPLETION = {"prompt": "Say hi.", "completion": "Hi!"}


def _jsonl(tmp_path: Path, name: str, lines: list) -> Path:
    path = tmp_path / name
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    return path


def _only(result: dict) -> dict:
    assert result["quarantine"] == []
    assert len(result["records"]) == 1
    return result["records"][0]


@pytest.mark.parametrize(
    ("fmt", "record", "messages"),
    [
        (
            "alpaca",
            ALPACA,
            [
                {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                {"role": "assistant", "content": "5"},
            ],
        ),
        (
            "dolly",
            DOLLY,
            [
                {"role": "user", "content": "Summarize.\n\nA long text."},
                {"role": "assistant", "content": "Short."},
            ],
        ),
        (
            "sharegpt",
            SHAREGPT,
            [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye?"},
                {"role": "assistant", "content": "Bye."},
            ],
        ),
        ("openai", OPENAI, OPENAI["messages"]),
        (
            "prompt_completion",
            PROMPT_COMPLETION,
            [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        ),
    ],
)
@pytest.mark.parametrize("declared", [False, True])
def test_each_format_becomes_chat_messages(tmp_path, fmt, record, messages, declared):
    path = _jsonl(tmp_path, "seeds.jsonl", [record])
    result = load_seed_file(path, fmt if declared else "auto")
    rec = _only(result)
    assert rec["messages"] == messages
    assert rec["source"] == "seed:seeds.jsonl"
    assert rec["generator"] == f"seed:{fmt}"
    assert rec["split"] == "train"
    assert rec["topic"] == "summarization" if fmt == "dolly" else rec["topic"].startswith("seed:seeds/")
    assert len(rec["id"]) == 16 and int(rec["id"], 16) >= 0
    assert result["stats"] == {"lines": 1, "imported": 1, "quarantined": 0, "by_format": {fmt: 1}}


def test_alpaca_without_input_and_dolly_without_category(tmp_path):
    path = _jsonl(
        tmp_path,
        "s.jsonl",
        [{"instruction": "Q1", "input": "", "output": "A1"}, {"instruction": "Q2", "response": "A2"}],
    )
    records = load_seed_file(path)["records"]
    assert [r["messages"][0]["content"] for r in records] == ["Q1", "Q2"]
    assert [r["generator"] for r in records] == ["seed:alpaca", "seed:dolly"]
    assert records[1]["topic"].startswith("seed:s/")


def test_sharegpt_accepts_role_content_and_openai_text_parts(tmp_path):
    sharegpt = {"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": "A"},
        ]
    }
    records = load_seed_file(_jsonl(tmp_path, "s.jsonl", [sharegpt, parts]))["records"]
    expected = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert [r["messages"] for r in records] == [expected, expected]


def test_system_prompt_added_only_when_conversation_has_none(tmp_path):
    path = _jsonl(tmp_path, "s.jsonl", [ALPACA, SHAREGPT])
    records = load_seed_file(path, system_prompt="You are helpful.")["records"]
    assert records[0]["messages"][0] == {"role": "system", "content": "You are helpful."}
    assert records[0]["messages"][1]["role"] == "user"
    assert records[1]["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sum(m["role"] == "system" for m in records[1]["messages"]) == 1


def test_auto_detection_on_a_mixed_file(tmp_path):
    path = _jsonl(tmp_path, "mixed.jsonl", [ALPACA, DOLLY, SHAREGPT, OPENAI, PROMPT_COMPLETION, OPENAI])
    result = load_seed_file(path)
    assert [r["generator"] for r in result["records"]] == [
        "seed:alpaca",
        "seed:dolly",
        "seed:sharegpt",
        "seed:openai",
        "seed:prompt_completion",
        "seed:openai",
    ]
    assert result["stats"]["by_format"] == {
        "alpaca": 1,
        "dolly": 1,
        "sharegpt": 1,
        "openai": 2,
        "prompt_completion": 1,
    }
    ids = [r["id"] for r in result["records"]]
    assert len(set(ids)) == len(ids), "the same content on two lines keeps two ids"
    assert ids == [r["id"] for r in load_seed_file(path)["records"]], "ids are stable across imports"


def test_malformed_lines_are_quarantined_with_line_and_reason(tmp_path):
    lines = [
        ALPACA,  # 1
        "{not json",  # 2
        {"instruction": "No answer."},  # 3: missing output
        OPENAI,  # 4
        {"instruction": "Q", "response": "   "},  # 5: empty response
        {"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}]},  # 6: order
        {"foo": 1, "bar": 2},  # 7: unknown keys only
        "",  # blank: skipped, not counted
        '["a", "list"]',  # 9: not an object
        {"messages": [{"role": "user", "content": "Q"}]},  # 10: no assistant answer
        {"instruction": "Q", "output": 42},  # 11: wrong type
        DOLLY,  # 12
    ]
    path = _jsonl(tmp_path, "bad.jsonl", lines)
    result = load_seed_file(path)
    assert [r["generator"] for r in result["records"]] == ["seed:alpaca", "seed:openai", "seed:dolly"]
    quarantine = {q["line"]: q for q in result["quarantine"]}
    assert sorted(quarantine) == [2, 3, 5, 6, 7, 9, 10, 11]
    assert "invalid JSON" in quarantine[2]["reason"]
    assert "'output'" in quarantine[3]["reason"]
    assert "'response'" in quarantine[5]["reason"] and "empty" in quarantine[5]["reason"]
    assert "messages[0]" in quarantine[6]["reason"] and "'user'" in quarantine[6]["reason"]
    assert "unknown record format" in quarantine[7]["reason"] and "foo" in quarantine[7]["reason"]
    assert "not a JSON object" in quarantine[9]["reason"]
    assert "assistant" in quarantine[10]["reason"]
    assert "'output'" in quarantine[11]["reason"] and "string" in quarantine[11]["reason"]
    for q in result["quarantine"]:
        assert q["path"] == str(path)
        assert q["raw"] == path.read_text().split("\n")[q["line"] - 1]
    assert result["stats"] == {
        "lines": 11,
        "imported": 3,
        "quarantined": 8,
        "by_format": {"alpaca": 1, "openai": 1, "dolly": 1},
    }


def test_bad_role_names_and_alternation_are_quarantined(tmp_path):
    lines = [
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "tool", "value": "A"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"}]},
        {"messages": [{"role": "system", "content": "S"}]},
        {"messages": "hello"},
    ]
    result = load_seed_file(_jsonl(tmp_path, "s.jsonl", lines))
    assert result["records"] == []
    reasons = [q["reason"] for q in result["quarantine"]]
    assert "unknown role 'tool'" in reasons[0]
    assert "messages[1]" in reasons[1] and "expected role 'assistant'" in reasons[1]
    assert "only a system turn" in reasons[2]
    assert "must be a list" in reasons[3]


def test_raw_is_truncated(tmp_path):
    path = _jsonl(tmp_path, "s.jsonl", [{"instruction": "x" * 5000}])
    (entry,) = load_seed_file(path)["quarantine"]
    assert len(entry["raw"]) == 2000


def test_declared_format_mismatch_is_quarantined(tmp_path):
    path = _jsonl(tmp_path, "s.jsonl", [ALPACA, DOLLY, OPENAI])
    result = load_seed_file(path, "alpaca")
    assert [r["generator"] for r in result["records"]] == ["seed:alpaca"]
    reasons = {q["line"]: q["reason"] for q in result["quarantine"]}
    assert sorted(reasons) == [2, 3]
    assert "declared format 'alpaca'" in reasons[2] and "'output'" in reasons[2]
    assert "looks like 'dolly'" in reasons[2]
    assert "'instruction'" in reasons[3] and "looks like 'openai'" in reasons[3]
    assert result["stats"]["quarantined"] == 2


def test_json_list_input_uses_index_plus_one_as_line(tmp_path):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([ALPACA, {"instruction": "Q"}, OPENAI]))
    result = load_seed_file(path)
    assert [r["generator"] for r in result["records"]] == ["seed:alpaca", "seed:openai"]
    assert result["records"][0]["topic"].startswith("seed:seeds/")
    (entry,) = result["quarantine"]
    assert entry["line"] == 2 and "'output'" in entry["reason"]
    assert json.loads(entry["raw"]) == {"instruction": "Q"}
    assert result["stats"]["lines"] == 3


def test_unusable_files_raise_with_path_and_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl.*instructions\.seed_files"):
        load_seed_file(tmp_path / "missing.jsonl")
    not_list = tmp_path / "obj.json"
    not_list.write_text(json.dumps(ALPACA))
    with pytest.raises(ValueError, match=r"obj\.json.*list of records.*instructions\.seed_files"):
        load_seed_file(not_list)
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json.*invalid JSON"):
        load_seed_file(broken)
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(b'{"prompt": "\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl.*UTF-8"):
        load_seed_file(binary)
    with pytest.raises(ValueError, match="unknown seed format"):
        load_seed_file(_jsonl(tmp_path, "ok.jsonl", [ALPACA]), "csv")
    with pytest.raises(FileNotFoundError, match=r"preferences\.feedback_files"):
        load_feedback_file(tmp_path / "missing.jsonl")


def test_line_separator_inside_a_string_does_not_split_a_record(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(
        json.dumps({"instruction": "a\u2028b", "output": "c"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    rec = _only(load_seed_file(path))
    assert rec["messages"][0]["content"] == "a\u2028b"


FEEDBACK = [
    {"prompt": "Q1?", "chosen": "Good answer.", "rejected": "Bad answer."},  # 1 pairwise, string prompt
    {  # 2 pairwise, messages prompt, message answers
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2?"}],
        "chosen": [{"role": "assistant", "content": "Yes."}],
        "rejected": {"role": "assistant", "content": "No."},
    },
    {"prompt": "Q3?", "completion": "Fine.", "label": True},  # 3 binary
    {"prompt": "Q4?", "completion": "Meh.", "label": "down"},  # 4
    {"prompt": "Q5?", "completion": "Great.", "label": "thumbs_up"},  # 5
    {"prompt": "Q6?", "completion": "Wrong.", "label": 0},  # 6
    {"prompt": "Q7?", "completion": "Right.", "label": "good"},  # 7
    {"prompt": "Q8?", "completion": "Awful.", "label": "bad"},  # 8
    {"prompt": "Q9?", "chosen": "Same  answer.", "rejected": " Same answer. "},  # 9 chosen == rejected
    {"prompt": "Q10?", "completion": "x", "label": "maybe"},  # 10 bad label
    {"prompt": "Q11?", "chosen": "A"},  # 11 missing rejected
    {"question": "Q12?"},  # 12 unknown kind
    "{oops",  # 13 bad JSON
    {"prompt": "Q14?", "chosen": "A", "rejected": [{"role": "user", "content": "B"}]},  # 14 not assistant
]


def test_feedback_pairwise_and_binary_in_one_file(tmp_path):
    path = _jsonl(tmp_path, "feedback.jsonl", FEEDBACK)
    result = load_feedback_file(path)

    pairs = result["pairwise"]
    assert [p["prompt"] for p in pairs] == [
        [{"role": "user", "content": "Q1?"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2?"}],
    ]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Good answer.", "Bad answer."), ("Yes.", "No.")]
    for p in pairs:
        assert set(p) == {
            "id",
            "prompt",
            "chosen",
            "rejected",
            "chosen_source",
            "rejected_source",
            "judge_score",
        }
        assert (p["chosen_source"], p["rejected_source"], p["judge_score"]) == ("human", "human", None)
    assert check_pairs(pairs) == []

    binary = result["binary"]
    assert [(b["prompt"][0]["content"], b["completion"], b["label"]) for b in binary] == [
        ("Q3?", "Fine.", True),
        ("Q4?", "Meh.", False),
        ("Q5?", "Great.", True),
        ("Q6?", "Wrong.", False),
        ("Q7?", "Right.", True),
        ("Q8?", "Awful.", False),
    ]
    assert all(b["source"] == "human:feedback.jsonl" for b in binary)
    assert all(set(b) == {"id", "prompt", "completion", "label", "source"} for b in binary)
    ids = [r["id"] for r in pairs + binary]
    assert len(set(ids)) == len(ids)

    reasons = {q["line"]: q["reason"] for q in result["quarantine"]}
    assert sorted(reasons) == [9, 10, 11, 12, 13, 14]
    assert "same text" in reasons[9]
    assert "'label'" in reasons[10] and "maybe" in reasons[10]
    assert "'rejected'" in reasons[11]
    assert "unknown feedback record" in reasons[12]
    assert "invalid JSON" in reasons[13]
    assert "'rejected'" in reasons[14] and "assistant" in reasons[14]
    assert result["stats"] == {"lines": 14, "pairwise": 2, "binary": 6, "quarantined": 6}


def test_feedback_prompt_from_full_conversations_and_json_list(tmp_path):
    convo = [{"role": "user", "content": "Q?"}]
    record = {
        "chosen": convo + [{"role": "assistant", "content": "Good."}],
        "rejected": convo + [{"role": "assistant", "content": "Bad."}],
    }
    path = tmp_path / "fb.json"
    path.write_text(json.dumps([record, {"chosen": "A", "rejected": "B"}]))
    result = load_feedback_file(path)
    (pair,) = result["pairwise"]
    assert pair["prompt"] == convo and (pair["chosen"], pair["rejected"]) == ("Good.", "Bad.")
    (entry,) = result["quarantine"]
    assert entry["line"] == 2 and "'prompt'" in entry["reason"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("UP", True),
        ("thumbs_down", False),
        ("bad", False),
    ],
)
def test_parse_label_spellings(value, expected):
    assert parse_label(value) is expected


@pytest.mark.parametrize("value", [2, "maybe", None, [1]])
def test_parse_label_rejects_other_values(value):
    with pytest.raises(ValueError, match="'label'"):
        parse_label(value)


def test_write_quarantine_round_trips(tmp_path):
    result = load_seed_file(_jsonl(tmp_path, "s.jsonl", [ALPACA, "{bad", {"foo": "ünïcode"}]))
    out = write_quarantine(result["quarantine"], tmp_path / "out" / "quarantine.jsonl")
    assert out == tmp_path / "out" / "quarantine.jsonl"
    assert read_jsonl(out) == result["quarantine"]
    assert len(read_jsonl(out)) == 2
    assert [p.name for p in out.parent.iterdir()] == ["quarantine.jsonl"], "no temporary file left behind"


def test_crlf_lines_and_byte_order_mark(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(("\ufeff" + json.dumps(ALPACA) + "\r\n{bad\r\n").encode("utf-8"))
    result = load_seed_file(path)
    assert len(result["records"]) == 1
    (entry,) = result["quarantine"]
    assert (entry["line"], entry["raw"]) == (2, "{bad")

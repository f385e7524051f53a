"""phases.data.seeds: seed instruction import in five formats, with quarantine."""

import json
from pathlib import Path

import pytest

from finetune_assets.io import read_jsonl
from finetune_assets.phases.data.feedback import load_feedback_file
from finetune_assets.phases.data.seeds import SeedFile, load_seed_file, write_quarantine

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


def _only(result: SeedFile) -> dict:
    assert result.quarantine == []
    assert len(result.records) == 1
    return result.records[0]


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
    assert result.stats == {"lines": 1, "imported": 1, "quarantined": 0, "by_format": {fmt: 1}}


def test_alpaca_without_input_and_dolly_without_category(tmp_path):
    path = _jsonl(
        tmp_path,
        "s.jsonl",
        [{"instruction": "Q1", "input": "", "output": "A1"}, {"instruction": "Q2", "response": "A2"}],
    )
    records = load_seed_file(path).records
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
    records = load_seed_file(_jsonl(tmp_path, "s.jsonl", [sharegpt, parts])).records
    expected = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert [r["messages"] for r in records] == [expected, expected]


def test_system_prompt_added_only_when_conversation_has_none(tmp_path):
    path = _jsonl(tmp_path, "s.jsonl", [ALPACA, SHAREGPT])
    records = load_seed_file(path, system_prompt="You are helpful.").records
    assert records[0]["messages"][0] == {"role": "system", "content": "You are helpful."}
    assert records[0]["messages"][1]["role"] == "user"
    assert records[1]["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sum(m["role"] == "system" for m in records[1]["messages"]) == 1


def test_auto_detection_on_a_mixed_file(tmp_path):
    path = _jsonl(tmp_path, "mixed.jsonl", [ALPACA, DOLLY, SHAREGPT, OPENAI, PROMPT_COMPLETION, OPENAI])
    result = load_seed_file(path)
    assert [r["generator"] for r in result.records] == [
        "seed:alpaca",
        "seed:dolly",
        "seed:sharegpt",
        "seed:openai",
        "seed:prompt_completion",
        "seed:openai",
    ]
    assert result.stats["by_format"] == {
        "alpaca": 1,
        "dolly": 1,
        "sharegpt": 1,
        "openai": 2,
        "prompt_completion": 1,
    }
    ids = [r["id"] for r in result.records]
    assert len(set(ids)) == len(ids), "the same content on two lines keeps two ids"
    assert ids == [r["id"] for r in load_seed_file(path).records], "ids are stable across imports"


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
    assert [r["generator"] for r in result.records] == ["seed:alpaca", "seed:openai", "seed:dolly"]
    quarantine = {q["line"]: q for q in result.quarantine}
    assert sorted(quarantine) == [2, 3, 5, 6, 7, 9, 10, 11]
    assert "invalid JSON" in quarantine[2]["reason"]
    assert "'output'" in quarantine[3]["reason"]
    assert "'response'" in quarantine[5]["reason"] and "empty" in quarantine[5]["reason"]
    assert "messages[0]" in quarantine[6]["reason"] and "'user'" in quarantine[6]["reason"]
    assert "unknown record format" in quarantine[7]["reason"] and "foo" in quarantine[7]["reason"]
    assert "not a JSON object" in quarantine[9]["reason"]
    assert "assistant" in quarantine[10]["reason"]
    assert "'output'" in quarantine[11]["reason"] and "string" in quarantine[11]["reason"]
    for q in result.quarantine:
        assert q["path"] == str(path)
        assert q["raw"] == path.read_text().split("\n")[q["line"] - 1]
    assert result.stats == {
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
    assert result.records == []
    reasons = [q["reason"] for q in result.quarantine]
    assert "unknown role 'tool'" in reasons[0]
    assert "messages[1]" in reasons[1] and "expected role 'assistant'" in reasons[1]
    assert "only a system turn" in reasons[2]
    assert "must be a list" in reasons[3]


def test_raw_is_truncated(tmp_path):
    path = _jsonl(tmp_path, "s.jsonl", [{"instruction": "x" * 5000}])
    (entry,) = load_seed_file(path).quarantine
    assert len(entry["raw"]) == 2000


def test_declared_format_mismatch_is_quarantined(tmp_path):
    path = _jsonl(tmp_path, "s.jsonl", [ALPACA, DOLLY, OPENAI])
    result = load_seed_file(path, "alpaca")
    assert [r["generator"] for r in result.records] == ["seed:alpaca"]
    reasons = {q["line"]: q["reason"] for q in result.quarantine}
    assert sorted(reasons) == [2, 3]
    assert "declared format 'alpaca'" in reasons[2] and "'output'" in reasons[2]
    assert "looks like 'dolly'" in reasons[2]
    assert "'instruction'" in reasons[3] and "looks like 'openai'" in reasons[3]
    assert result.stats["quarantined"] == 2


def test_json_list_input_uses_index_plus_one_as_line(tmp_path):
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([ALPACA, {"instruction": "Q"}, OPENAI]))
    result = load_seed_file(path)
    assert [r["generator"] for r in result.records] == ["seed:alpaca", "seed:openai"]
    assert result.records[0]["topic"].startswith("seed:seeds/")
    (entry,) = result.quarantine
    assert entry["line"] == 2 and "'output'" in entry["reason"]
    assert json.loads(entry["raw"]) == {"instruction": "Q"}
    assert result.stats["lines"] == 3


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
    binary = tmp_path / "latin1.json"  # a .json file is one document: bad bytes make it unusable
    binary.write_bytes(b'[{"prompt": "\xe9"}]')
    with pytest.raises(ValueError, match=r"latin1\.json.*UTF-8"):
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


def test_write_quarantine_round_trips(tmp_path):
    result = load_seed_file(_jsonl(tmp_path, "s.jsonl", [ALPACA, "{bad", {"foo": "ünïcode"}]))
    out = write_quarantine(result.quarantine, tmp_path / "out" / "quarantine.jsonl")
    assert out == tmp_path / "out" / "quarantine.jsonl"
    assert read_jsonl(out) == result.quarantine
    assert len(read_jsonl(out)) == 2
    assert [p.name for p in out.parent.iterdir()] == ["quarantine.jsonl"], "no temporary file left behind"


def test_crlf_lines_and_byte_order_mark(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes(("\ufeff" + json.dumps(ALPACA) + "\r\n{bad\r\n").encode("utf-8"))
    result = load_seed_file(path)
    assert len(result.records) == 1
    (entry,) = result.quarantine
    assert (entry["line"], entry["raw"]) == (2, "{bad")


def test_same_named_seed_files_keep_their_own_records(tmp_path):
    from finetune_assets.phases.data.seeds import load_seed_files

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _jsonl(tmp_path / "a", "data.jsonl", [ALPACA])
    second = _jsonl(tmp_path / "b", "data.jsonl", [ALPACA, OPENAI])  # the same first line as the other file
    loaded = load_seed_files([(first, "auto"), (second, "auto"), (first, "auto")])
    assert sorted(loaded.extra) == ["seed:a/data.jsonl", "seed:b/data.jsonl"]
    assert [len(loaded.extra[k]) for k in sorted(loaded.extra)] == [1, 2]
    ids = [r["id"] for records in loaded.extra.values() for r in records]
    assert len(set(ids)) == 3, "identical lines of same-named files are distinct records"
    assert sorted(loaded.stats) == ["a/data.jsonl", "b/data.jsonl"]


def test_one_bad_byte_sets_aside_its_line_only(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(json.dumps(ALPACA).encode() + b'\n{"prompt": "caf\xe9?", "completion": "x"}\n')
    loaded = load_seed_file(path)
    assert len(loaded.records) == 1
    assert [(q["line"], "not UTF-8" in q["reason"]) for q in loaded.quarantine] == [(2, True)]

"""phases.data.feedback: human feedback import (pairwise and thumbs up/down), with quarantine."""

import json

import pytest

from finetune_assets.phases.data.feedback import load_feedback_file, parse_label
from finetune_assets.phases.data.preferences import check_pairs
from finetune_assets_tests.phases.data.test_seeds import _jsonl

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

    pairs = result.pairwise
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

    binary = result.binary
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

    reasons = {q["line"]: q["reason"] for q in result.quarantine}
    assert sorted(reasons) == [9, 10, 11, 12, 13, 14]
    assert "same text" in reasons[9]
    assert "'label'" in reasons[10] and "maybe" in reasons[10]
    assert "'rejected'" in reasons[11]
    assert "unknown feedback record" in reasons[12]
    assert "invalid JSON" in reasons[13]
    assert "'rejected'" in reasons[14] and "assistant" in reasons[14]
    assert result.stats == {"lines": 14, "pairwise": 2, "binary": 6, "quarantined": 6}


def test_feedback_prompt_from_full_conversations_and_json_list(tmp_path):
    convo = [{"role": "user", "content": "Q?"}]
    record = {
        "chosen": convo + [{"role": "assistant", "content": "Good."}],
        "rejected": convo + [{"role": "assistant", "content": "Bad."}],
    }
    path = tmp_path / "fb.json"
    path.write_text(json.dumps([record, {"chosen": "A", "rejected": "B"}]))
    result = load_feedback_file(path)
    (pair,) = result.pairwise
    assert pair["prompt"] == convo and (pair["chosen"], pair["rejected"]) == ("Good.", "Bad.")
    (entry,) = result.quarantine
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


def test_same_named_feedback_files_keep_their_own_rows(tmp_path):
    from finetune_assets.phases.data.feedback import load_feedback_files

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    row = {"prompt": "Q1?", "chosen": "Good answer.", "rejected": "Bad answer."}
    first, second = _jsonl(tmp_path / "a", "fb.jsonl", [row]), _jsonl(tmp_path / "b", "fb.jsonl", [row])
    found = load_feedback_files([first, second, first])
    assert len(found.pairwise) == 2 and len({r["id"] for r in found.pairwise}) == 2

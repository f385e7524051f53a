"""Live feedback into training rows: preferred answers and up/down on one prompt become pairs, thumbs KTO
rows; bad rows set aside with a reason; duplicates and eval-contaminated rows dropped."""

import json

from finetune_assets.phases.data import online_feedback
from finetune_assets.phases.data.feedback import Feedback

Q = [{"role": "user", "content": "How do I reverse a list in place?"}]


def _response(rid, answer, messages=Q, variant="champion"):
    return {"id": rid, "messages": messages, "answer": answer, "variant": variant, "status": 200}


def _fb(fid, rid, label=None, preferred=None, user="u", day="2026-12-07"):
    return {
        "id": fid,
        "response_id": rid,
        "label": label,
        "preferred": preferred,
        "user_id": user,
        "day": day,
    }


def test_preferred_answers_and_opposite_ratings_on_one_prompt_become_pairs():
    responses = {
        "r1": _response("r1", "Use sorted()."),
        "r2": _response("r2", "Call lst.reverse().", variant="x"),
    }
    feedback = [
        _fb("f1", "r1", label=False, preferred="Call lst.reverse(); it returns None."),
        _fb("f2", "r2", label=True, user="v"),
        _fb("f3", "r1", label=True),  # the same user changes their mind: the last rating counts...
        _fb("f4", "r1", label=False),  # ...which is down again
    ]
    got = online_feedback.from_log(responses, feedback)
    chosen_rejected = {(p["chosen"], p["rejected"], p["chosen_source"]) for p in got.pairwise}
    assert chosen_rejected == {
        ("Call lst.reverse(); it returns None.", "Use sorted().", "user_preferred"),
        ("Call lst.reverse().", "Use sorted().", "user_upvoted"),
    }
    assert sorted((b["completion"], b["label"]) for b in got.binary) == [("Call lst.reverse().", True),
                                                                         ("Use sorted().", False)]  # fmt: skip
    assert all(p["prompt"] == Q for p in got.pairwise) and got.quarantine == []


def test_rows_that_cannot_be_training_data_are_set_aside_with_the_reason():
    tool_turns = [*Q, {"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": "1"},
                  {"role": "user", "content": "and?"}]  # fmt: skip
    responses = {
        "r1": _response("r1", "Use sorted()."),
        "r2": _response("r2", ""),
        "r3": _response("r3", "x", tool_turns),
    }
    feedback = [_fb("f1", "gone", label=True), _fb("f2", "r2", label=True), _fb("f3", "r3", label=False),
                _fb("f4", "r1", preferred="Use sorted().")]  # fmt: skip
    got = online_feedback.from_log(responses, feedback)
    reasons = {q["line"]: q["reason"] for q in got.quarantine}
    assert "not in the log" in reasons["f1"] and "no answer" in reasons["f2"]
    assert "tool turns" in reasons["f3"] and "no preference signal" in reasons["f4"]
    assert got.pairwise == [] and got.binary == []


def test_clean_drops_duplicates_and_rows_that_quote_the_eval_sets(tmp_path):
    eval_dir = tmp_path / "eval_sets"
    eval_dir.mkdir()
    held_out = "the walrus operator assigns a value inside an expression and returns it too"
    (eval_dir / "qa_gen.jsonl").write_text(json.dumps({"question": "q", "answer": held_out}) + "\n")
    pair = {"prompt": Q, "chosen": "Call lst.reverse() on the list.", "rejected": "Use sorted().", "id": "a"}
    leaky = {**pair, "id": "c", "chosen": f"Well, {held_out}."}
    fb = Feedback([pair, {**pair, "id": "b"}, leaky], [], [], {"feedback": 3})
    cleaned, removed = online_feedback.clean(fb, eval_dir, ngram=8)
    assert [p["id"] for p in cleaned.pairwise] == ["a"]
    assert removed == {"duplicates_removed": 1, "contaminated_removed": 1}


def test_days_are_merged_oldest_first_and_deduplicated_across_days(tmp_path):
    pair = {"id": "a", "prompt": Q, "chosen": "Call lst.reverse().", "rejected": "Use sorted().",
            "chosen_source": "user_preferred", "rejected_source": "served", "judge_score": None}  # fmt: skip
    for day, rows in [("2026-12-06", [pair]), ("2026-12-07", [{**pair, "id": "b"}])]:
        online_feedback.write(Feedback(rows, [], [], {"pairwise": 1}), tmp_path / day)
    (tmp_path / ".2026-12-08.x.tmp").mkdir()  # a day being written is not read
    merged = online_feedback.load_days(tmp_path)
    assert [p["id"] for p in merged.pairwise] == ["a"] and merged.stats["days"] == 2
    assert merged.stats["duplicates_removed"] == 1

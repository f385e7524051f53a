"""The serving log: append, look up, feedback, rotation into Parquet without loss, several writer processes."""

import multiprocessing
import time

from finetune_assets.phases.serving.request_log import RequestLog, day_of

DAY = 86400.0


def _response(i: int, created: float, variant: str = "champion") -> dict:
    return {"id": f"chatcmpl-{i}", "created": created, "variant": variant, "routed": True, "user_id": f"u{i}",
            "messages": [{"role": "user", "content": f"question {i}"}], "answer": f"answer {i}", "status": 200,
            "latency_s": 0.1, "prompt_tokens": 5, "completion_tokens": 2, "finish_reason": "stop"}  # fmt: skip


def test_responses_and_feedback_round_trip(tmp_path):
    log = RequestLog(f"sqlite:///{tmp_path / 'serving' / 'requests.sqlite'}")
    now = time.time()
    log.log_response(_response(1, now))
    got = log.response("chatcmpl-1")
    assert got["messages"] == [{"role": "user", "content": "question 1"}] and got["day"] == day_of(now)
    assert log.response("chatcmpl-missing") is None
    log.log_feedback("chatcmpl-1", False, preferred="a better answer", user_id="u1", created=now)
    [fb] = log.feedback_of([day_of(now)])
    assert fb["label"] is False and fb["preferred"] == "a better answer" and fb["response_id"] == "chatcmpl-1"
    assert log.count_feedback(after=now - 1) == 1 and log.count_feedback(after=now + 1) == 0


def test_rotation_moves_old_days_to_parquet_and_readers_see_each_row_once(tmp_path):
    log = RequestLog(f"sqlite:///{tmp_path / 'requests.sqlite'}")
    now = time.time()
    for i, age in enumerate([10, 10, 3, 0]):
        log.log_response(_response(i, now - age * DAY))
        log.log_feedback(f"chatcmpl-{i}", i % 2 == 0, created=now - age * DAY)
    before = [r["id"] for r in log.responses_of()]
    moved = log.rotate(keep_days=5, now=now)
    assert moved == {"responses": 2, "feedback": 2}
    assert len(list((tmp_path / "archive" / "responses").glob("day=*/part-*.parquet"))) == 1
    assert [r["id"] for r in log.responses_of()] == before  # archive + database, nothing lost
    assert [r["id"] for r in log.rows("responses")] == ["chatcmpl-2", "chatcmpl-3"]  # the database kept 2
    old_day = day_of(now - 10 * DAY)
    assert {r["id"] for r in log.responses_of([old_day])} == {"chatcmpl-0", "chatcmpl-1"}
    assert log.responses_by_id({"chatcmpl-0", "chatcmpl-3"}).keys() == {"chatcmpl-0", "chatcmpl-3"}
    assert [f["label"] for f in log.feedback_of([old_day])] == [True, False]
    # the state a crash between the Parquet rename and the delete leaves: a row in both places, read once
    log.log_response(_response(0, now - 10 * DAY))
    assert sorted(r["id"] for r in log.responses_of([old_day])) == ["chatcmpl-0", "chatcmpl-1"]
    log.rotate(keep_days=5, now=now)  # and rotated again: in two Parquet parts, still read once
    assert sorted(r["id"] for r in log.responses_of([old_day])) == ["chatcmpl-0", "chatcmpl-1"]


def _append_many(url: str, start: int, count: int) -> None:
    log = RequestLog(url)
    for i in range(start, start + count):
        log.log_response(_response(i, time.time()))


def test_several_processes_append_to_one_sqlite_log(tmp_path):
    url = f"sqlite:///{tmp_path / 'requests.sqlite'}"
    RequestLog(url)  # tables made once, before the writers race
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_append_many, args=(url, k * 1000, 60)) for k in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0, 0]
    assert len(RequestLog(url).responses_of()) == 180

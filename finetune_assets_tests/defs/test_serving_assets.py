"""The serving assets and the feedback loop's automation: ab_report and its blocking check on a seeded request
log, the feedback sensor ingesting the days of new feedback, and the retrain that follows an ingested day."""

import random
import time

import dagster as dg

from finetune_assets.defs import automation
from finetune_assets.defs.automation import feedback_due, retrain_on_feedback, retrain_on_new_data
from finetune_assets.phases.serving.request_log import RequestLog, day_of
from finetune_assets.pipeline import all_assets_and_checks


def _seed_traffic(log: RequestLog, approval: dict, n: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)
    now = time.time()
    for i in range(n):
        variant = "champion" if rng.random() < 0.6 else "challenger"
        rid = f"chatcmpl-{seed}-{i}"
        log.log_response({"id": rid, "created": now - i, "variant": variant, "routed": True, "user_id": f"u{i}",
                          "messages": [{"role": "user", "content": f"question {i}"}], "answer": f"answer {i}",
                          "status": 200, "latency_s": rng.uniform(0.1, 0.3)})  # fmt: skip
        log.log_feedback(rid, rng.random() < approval[variant], created=now - i)


def _ab(instance, resources):
    result = dg.materialize(all_assets_and_checks(), instance=instance, resources=resources,
                            selection=["ab_report"], raise_on_error=False)  # fmt: skip
    [check] = result.get_asset_check_evaluations()
    return result, check


def test_ab_report_blocks_a_challenger_users_like_significantly_less(resources, instance):
    _seed_traffic(resources["request_log"].open(), {"champion": 0.8, "challenger": 0.4})
    result, check = _ab(instance, resources)
    assert check.check_name == "challenger_not_worse" and not check.passed
    assert "challenger" in check.metadata["significantly_worse"].value
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["requests"].value == 300 and metadata["blocked"].value == ["challenger"]
    assert "approval" in metadata["report"].value and "(reference)" in metadata["report"].value
    run = resources["mlflow"].tracker().client.get_run(metadata["mlflow_run_id"].value)
    assert 0 < run.data.metrics["ab/challenger/approval_high"] < run.data.metrics["ab/champion/approval_low"]


def test_ab_report_passes_a_challenger_within_noise(resources, instance):
    _seed_traffic(resources["request_log"].open(), {"champion": 0.7, "challenger": 0.7}, seed=1)
    _, check = _ab(instance, resources)
    assert check.passed


def test_feedback_due_waits_for_enough_and_then_ingests_every_pending_day():
    days, state = feedback_due(None, [], latest=50.0, minimum=3)
    assert days == [] and state["after"] == 50.0  # logged before the sensor ran: known
    days, state = feedback_due(state, [(60.0, "2026-12-06"), (70.0, "2026-12-07")], 70.0, 3)
    assert days == [] and state["pending"] == {"2026-12-06": 1, "2026-12-07": 1}
    days, state = feedback_due(state, [(80.0, "2026-12-07")], 80.0, 3)
    assert days == ["2026-12-06", "2026-12-07"] and state == {"after": 80.0, "pending": {}}


def test_enough_feedback_ingests_its_day_and_the_ingested_day_retrains(resources, instance, monkeypatch):
    log = resources["request_log"].open()
    log.log_response({"id": "chatcmpl-x", "variant": "champion", "routed": True, "status": 200, "latency_s": 0.1,
                      "messages": [{"role": "user", "content": "What is a generator?"}],
                      "answer": "A function that yields."})  # fmt: skip

    def tick(sensor, cursor):
        context = dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor)
        return sensor(context), context.cursor

    first, cursor = tick(retrain_on_feedback, None)
    retrain_first, retrain_cursor = tick(retrain_on_new_data, None)
    assert isinstance(first, dg.SkipReason) and isinstance(retrain_first, dg.SkipReason)
    for label in (True, False):
        log.log_feedback("chatcmpl-x", label)
    waiting, cursor = tick(retrain_on_feedback, cursor)
    assert isinstance(waiting, dg.SkipReason) and "2 of 3" in waiting.skip_message  # smoke: 3 needed
    log.log_feedback("chatcmpl-x", None, preferred="A function whose body yields values lazily.")
    requests, cursor = tick(retrain_on_feedback, cursor)
    today = day_of(time.time())
    assert [(r.partition_key, r.job_name) for r in requests] == [(today, None)]
    result = dg.materialize(all_assets_and_checks(), instance=instance, resources=resources,
                            partition_key=today, selection=["online_feedback"])  # fmt: skip
    assert result.success
    waiting, retrain_cursor = tick(retrain_on_new_data, retrain_cursor)
    assert (
        isinstance(waiting, dg.SkipReason) and "1 ingested drop(s) or feedback day(s)" in waiting.skip_message
    )
    later = time.time() + 21  # smoke's automation.retrain_debounce_s is 20
    monkeypatch.setattr(automation.time, "time", lambda: later)
    retrain, _ = tick(retrain_on_new_data, retrain_cursor)
    assert isinstance(retrain, dg.RunRequest) and retrain.tags["finetune_assets/drops"] == "1"

"""The A/B report: per-variant approval, errors and latency with intervals; a challenger significantly worse
is blocked, one within noise is not; only routed requests count."""

import random

from finetune_assets.phases.evaluation import stats
from finetune_assets.phases.serving import ab_report


def _traffic(seed: int, approval: dict, errors: dict, n: int = 400, slow: str | None = None):
    """Seeded routed traffic split 70/30 with a rating on every second answer."""
    rng = random.Random(seed)
    responses, feedback = [], []
    for i in range(n):
        variant = "champion" if rng.random() < 0.7 else "challenger"
        status = 500 if rng.random() < errors[variant] else 200
        latency = rng.lognormvariate(0, 0.3) * (2.0 if variant == slow else 1.0)
        responses.append({"id": f"r{i}", "variant": variant, "routed": True, "status": status,
                          "latency_s": latency, "completion_tokens": 8, "created": i})  # fmt: skip
        if status == 200 and i % 2 == 0:
            feedback.append({"response_id": f"r{i}", "label": rng.random() < approval[variant], "created": i,
                             "preferred": None})  # fmt: skip
    return responses, feedback


def test_a_clearly_worse_challenger_is_blocked_with_its_interval():
    responses, feedback = _traffic(
        1, {"champion": 0.8, "challenger": 0.45}, {"champion": 0.0, "challenger": 0.0}
    )
    report = ab_report.build(responses, feedback)
    assert report["reference"] == "champion"  # the most traffic
    diff = report["comparisons"]["challenger"]["approval_diff"]
    assert diff["significant"] and diff["high"] < 0 and diff["low"] <= -0.35 + 0.2
    assert (
        report["blocked"] == ["challenger"]
        and "approval" in report["comparisons"]["challenger"]["blocking"][0]
    )
    champion = report["variants"]["champion"]
    assert champion["approval"]["low"] < 0.8 < champion["approval"]["high"]
    assert set(champion["latency_s"]) == {"p50", "p95", "p99"}
    assert "challenger" in ab_report.markdown(report) and "reference" in ab_report.markdown(report)


def test_a_challenger_within_noise_is_not_blocked_and_errors_and_latency_are_measured():
    responses, feedback = _traffic(2, {"champion": 0.7, "challenger": 0.7}, {"champion": 0.01, "challenger": 0.2},
                                   slow="challenger")  # fmt: skip
    report = ab_report.build(responses, feedback)
    comparison = report["comparisons"]["challenger"]
    assert not comparison["approval_diff"]["significant"]
    assert comparison["error_rate_diff"]["significant"] and report["blocked"] == ["challenger"]
    assert comparison["latency_p95_diff_s"]["significant"] and comparison["latency_p95_diff_s"]["diff"] > 0
    healthy = ab_report.build(
        *_traffic(2, {"champion": 0.7, "challenger": 0.7}, {"champion": 0.01, "challenger": 0.01})
    )
    assert healthy["blocked"] == []


def test_named_requests_do_not_count_and_a_preferred_answer_is_a_thumbs_down():
    row = {"status": 200, "latency_s": 0.1}
    responses = [{**row, "id": "a", "variant": "champion", "routed": True, "created": 0},
                 {**row, "id": "b", "variant": "challenger", "routed": False, "created": 1}]  # fmt: skip
    feedback = [{"response_id": "a", "label": True, "preferred": None, "created": 2},
                {"response_id": "a", "label": None, "preferred": "better", "created": 3}]  # fmt: skip
    report = ab_report.build(responses, feedback)
    assert list(report["variants"]) == ["champion"] and report["variants"]["champion"]["thumbs_up"] == 0
    assert ab_report.markdown(ab_report.build([], [])) == "No routed traffic in the window."


def test_two_proportions_matches_a_known_case_and_quantile_interval_covers():
    d = stats.two_proportions(56, 70, 48, 80)  # Newcombe (1998) example: 0.8 - 0.6
    assert abs(d.diff - 0.2) < 1e-9 and abs(d.low - 0.0524) < 2e-3 and abs(d.high - 0.3339) < 2e-3
    assert d.significant
    q = stats.quantile_interval(list(range(1, 101)), 0.5)
    assert q.low <= 50.5 <= q.high and q.method == "bootstrap"

"""phases.evaluation.variant: one whole variant evaluated on the tiny random model."""

import json
import math
import time
from pathlib import Path

import pytest

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig
from finetune_assets.phases.evaluation import variant as ev
from finetune_assets_tests.phases.evaluation.test_lm_eval_tasks import write_eval_sets


def test_evaluate_variant_on_tiny_model(tmp_path, tiny_model_dir, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    cfg = EvalConfig(
        max_new_tokens=8, batch_size=4, max_glossary_terms=3, max_qa=2, max_perplexity_docs=2,
        decode_speed_prompts=2, decode_speed_tokens=5, bootstrap_resamples=200,
    )  # fmt: skip
    started = time.perf_counter()
    result = ev.evaluate_variant(
        "base", tiny_model_dir, eval_dir, cfg, tmp_path / "work", embedder=None,
        guardrails_cfg=GuardrailsConfig(max_new_tokens=8),
    )  # fmt: skip
    wall = time.perf_counter() - started
    print(f"evaluate_variant on the tiny model: {wall:.1f} s")  # shown with pytest -s

    metrics = result["metrics"]
    assert result["variant"] == "base"
    assert result["counts"] == {
        "glossary": 3, "qa_mc": 2, "qa_gen": 2, "heldout_text": 2, "general_text": 2, "redteam": 4,
        "canaries": 2, "tool_use": 0,
    }  # fmt: skip
    assert (
        math.isfinite(metrics["fa_general_ppl/word_perplexity"]) and metrics["fa_general_ppl/sample_len"] == 2
    )
    assert metrics["guardrails/leakage_rate"] == 0.0 and metrics["guardrails/n_redteam"] == 4
    assert set(result["guardrails"]) == {"leakage", "refusal", "over_refusal", "bias"}
    assert not result["guardrails"]["refusal"]["passed"]  # a random model refuses nothing
    qa = io.read_jsonl(Path(result["files"]["qa"]))
    assert [r["id"] for r in qa] == ["qa0", "qa1"] and all("generated" in r for r in qa)
    assert metrics["hallucination/n_terms"] == 3 and 0 <= metrics["hallucination/index"] <= 1
    assert metrics["fa_domain_mc/sample_len"] == 2  # lm-eval saw the same capped items
    assert 0 <= metrics["fa_domain_mc/acc"] <= 1 and 0 <= metrics["fa_domain_qa/rougeL"] <= 1
    assert (
        math.isfinite(metrics["fa_heldout_ppl/word_perplexity"])
        and metrics["fa_heldout_ppl/word_perplexity"] > 1
    )
    assert metrics["fa_heldout_ppl/sample_len"] == 2  # the capped held-out documents
    assert metrics["generation/tokens_per_s"] >= 0 and metrics["generation/latency_s"] > 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())

    written = json.loads(Path(result["files"]["metrics"]).read_text())
    assert written["metrics"] == metrics and written["calibration"]["self_accept_rate"] == 1.0
    definitions = io.read_jsonl(Path(result["files"]["definitions"]))
    assert [d["term"] for d in definitions] == ["list", "tuple", "decorator"]

    # Per-item outcomes: keyed by the eval items' ids, and their mean is the metric itself.
    items = result["items"]
    assert set(items["hallucination/index"]) == {d["id"] for d in definitions}
    subset = tmp_path / "work" / "base" / "eval_subset"
    for metric, name in (("fa_domain_mc/acc", "qa_mc"), ("fa_domain_qa/rougeL", "qa_gen")):
        assert set(items[metric]) == {r["id"] for r in io.read_jsonl(subset / f"{name}.jsonl")}, metric
    assert {"guardrails/refusal_rate", "guardrails/over_refusal_rate", "guardrails/leakage_rate"} <= set(
        items
    )
    for metric, values in items.items():
        assert sum(values.values()) / len(values) == pytest.approx(metrics[metric]), metric
        iv = result["intervals"][metric]
        assert iv["low"] <= iv["value"] <= iv["high"] and iv["n"] == len(values), metric
    assert result["intervals"]["hallucination/index"]["method"] == "wilson"
    assert json.loads(Path(result["files"]["items"]).read_text()) == items and "items" not in written
    # Decode speed at a fixed length: the same prompts, exactly the configured number of new tokens.
    assert metrics["generation/decode_tokens_per_s_fixed"] > 0
    assert metrics["generation/decode_fixed_tokens"] == 5 and metrics["generation/decode_fixed_prompts"] == 2


def test_tool_use_items_carry_the_sandboxes_real_results():
    from finetune_assets.phases.data.evalsets import tool_use_items

    items = tool_use_items(12, seed=3)
    assert len(items) == 12 and len({i["expression"] for i in items}) == 12
    for item in items:
        assert repr(eval(item["expression"])) == item["expected"]  # noqa: S307 - test-only check of the sandbox
    assert tool_use_items(12, seed=3) == items


def test_bias_probe_model_has_fp32_weights(tiny_model_dir):
    """The bias probe compares P(yes) across prompts differing in one word: it runs on fp32 weights even
    when evaluation generates with bf16 ones (the fp32 model is used as it is)."""
    import torch

    from finetune_assets.phases.inference.generation import load_for_inference

    fp32, _ = load_for_inference(tiny_model_dir, precision="fp32")
    assert ev._fp32_copy(fp32, tiny_model_dir, None) is fp32
    bf16, _ = load_for_inference(tiny_model_dir, precision="bf16")
    probe = ev._fp32_copy(bf16, tiny_model_dir, None)
    assert next(probe.parameters()).dtype == torch.float32
    assert next(bf16.parameters()).dtype == torch.bfloat16
    for a, b in zip(probe.parameters(), fp32.parameters(), strict=True):
        assert torch.equal(a, b)  # reloaded from the folder, not the rounded bf16 weights cast back

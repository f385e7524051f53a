"""GRPO: the verifiable tool reward, prompt rows from T&R conversations, a reward that rises on the tiny model,
the T&R stage (SFT warm start + GRPO) writing the usual folder, and its Ray Train dispatch."""

import json
import math

import pytest

from finetune_assets.config import RetrievalConfig, TrainConfig
from finetune_assets.phases.data.tr_data import build_tr_examples
from finetune_assets.phases.inference.retrieval import RetrievalIndex, chunk_documents
from finetune_assets.phases.inference.tools import format_tool_call
from finetune_assets.phases.training import grpo as grpo_phase
from finetune_assets.phases.training.grpo import (
    WRONG_RESULT_REWARD,
    grpo,
    grpo_prompts,
    run_grpo,
    score_completion,
    tool_reward,
)

CFG = RetrievalConfig(chunk_words=40, chunk_overlap=5, top_k=2, passage_chars=80, max_tr_examples=12)


@pytest.fixture(scope="module")
def tr_records(tiny_corpus, tiny_chat_rows) -> list[dict]:
    docs = [{"id": f"doc{i}", "text": t, "title": f"Doc {i}"} for i, t in enumerate(tiny_corpus)]
    index = RetrievalIndex.from_chunks(chunk_documents(docs, CFG))
    cfg = CFG.model_copy(update={"tool_use_fraction": 0.5, "search_tool_fraction": 0.25})
    return [r for r in build_tr_examples(tiny_chat_rows, docs, index, cfg).records if r["split"] == "train"]


# --- reward -------------------------------------------------------------------------------------------------


def test_python_eval_reward_runs_the_models_expression_in_the_sandbox():
    def call(expression):
        return format_tool_call("python_eval", {"expression": expression})

    assert score_completion(call("sorted([3, 1, 2])"), "python_eval", "[1, 2, 3]") == 1.0
    # Another expression with the same value is just as right: the sandbox decides, not string matching.
    assert score_completion("Let me run it. " + call("[1, 2, 3]"), "python_eval", "[1, 2, 3]") == 1.0
    assert score_completion(call("sorted([3, 1])"), "python_eval", "[1, 2, 3]") == WRONG_RESULT_REWARD
    assert score_completion(call("__import__('os')"), "python_eval", "[1, 2, 3]") == WRONG_RESULT_REWARD
    assert score_completion("[1, 2, 3]", "python_eval", "[1, 2, 3]") == 0.0  # right value, no tool call
    assert score_completion('<tool_call>{"name": "python_eval", "argu', "python_eval", "[1, 2, 3]") == 0.0
    search = format_tool_call("search_docs", {"query": "sorted"})
    assert score_completion(search, "python_eval", "[1, 2, 3]") == 0.0  # the wrong tool


def test_search_and_answer_rewards():
    assert (
        score_completion(format_tool_call("search_docs", {"query": "tuple", "k": 2}), "search_docs", "") == 1
    )
    assert score_completion(format_tool_call("search_docs", {"query": "  "}), "search_docs", "") == 0
    assert score_completion("A tuple is immutable.", "search_docs", "") == 0
    assert score_completion("A tuple is immutable.", "answer", "ref") == 1
    assert score_completion(format_tool_call("search_docs", {"query": "tuple"}), "answer", "ref") == 0
    assert score_completion("  ", "answer", "ref") == 0
    # trl passes conversational completions as message lists
    completions = [[{"role": "assistant", "content": "Fine."}], "<tool_call>{}"]
    assert tool_reward(completions, kind=["answer", "answer"], expected=["x", "x"]) == [1.0, 0.0]


def test_grpo_prompts_keep_the_runtime_prompt_and_the_real_result(tr_records):
    rows = grpo_prompts(tr_records)
    assert len(rows) == len(tr_records)
    by_kind = {row["kind"]: row for row in rows}
    assert set(by_kind) == {"python_eval", "search_docs", "answer"}
    for row, record in zip(rows, tr_records, strict=True):
        assert row["prompt"] == record["messages"][:2]  # system + user: what TRRuntime sends
        if row["kind"] == "python_eval":
            assert row["expected"] == json.loads(record["messages"][3]["content"])["result"]
            # the training conversation's own call earns the full reward
            assert score_completion(record["messages"][2]["content"], "python_eval", row["expected"]) == 1.0
        if row["kind"] == "search_docs":
            assert score_completion(record["messages"][2]["content"], "search_docs", "") == 1.0


# --- training -----------------------------------------------------------------------------------------------


def _even_tokens(completion_ids, **_):
    """A reward the tiny random model can learn in a few dozen steps: the share of even token ids (~0.5 at
    start, with plenty of spread inside every group)."""
    return [sum(1 for t in ids if t % 2 == 0) / max(1, len(ids)) for ids in completion_ids]


def test_grpo_raises_the_mean_reward_on_the_tiny_model(tiny_model_dir, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Tell me about item {i}."}]} for i in range(16)]
    # Full fine-tuning: the random model's tied embeddings must move for its output distribution to change.
    cfg = TrainConfig(
        adapter="full", grpo_steps=30, grpo_learning_rate=2e-2, per_device_batch_size=8, num_generations=8,
        max_completion_length=8, checkpoint_steps=0, precision="fp32",
    )  # fmt: skip
    summary = run_grpo(tiny_model_dir, rows, cfg, tmp_path / "out", reward_funcs=[_even_tokens])

    rewards = summary["rewards"]
    assert summary["method"] == "grpo" and summary["steps"] == 30 and len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, rewards  # measured: 0.56 -> 1.0
    assert summary["changed_params"] > 0
    saved = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert saved["rewards"] == rewards and saved["last_reward"] == rewards[-1]
    assert (tmp_path / "out" / "merged" / "config.json").is_file()


def test_tr_grpo_warm_starts_with_sft_then_writes_the_usual_folder(tiny_model_dir, tr_records, tmp_path):
    cfg = TrainConfig(
        method="grpo", max_steps=2, grpo_steps=2, per_device_batch_size=4, num_generations=4,
        max_completion_length=12, max_length=512, lora_r=4, checkpoint_steps=0, max_eval_rows=0,
    )  # fmt: skip
    out = tmp_path / "tr_model"
    summary = grpo(tiny_model_dir, tr_records, [], cfg, out)

    assert summary["method"] == "grpo" and summary["steps"] == 2 and summary["sft_steps"] == 2
    assert math.isfinite(summary["sft_first_loss"])
    assert len(summary["rewards"]) == 2 and all(0.0 <= r <= 1.0 for r in summary["rewards"])
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    assert json.loads((out / "train_summary.json").read_text())["rewards"] == summary["rewards"]
    assert not [p.name for p in tmp_path.iterdir() if "warm" in p.name]  # the warm start is cleaned up


def test_ray_train_worker_dispatches_grpo_to_the_grpo_phase(monkeypatch, tmp_path):
    from finetune_assets.launch import ray_train

    seen = {}

    def fake_grpo(**kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(grpo_phase, "grpo", fake_grpo)
    cfg = TrainConfig(method="grpo", per_device_batch_size=4, num_generations=4)
    config = {"base_dir": str(tmp_path), "train_rows": [], "eval_rows": [], "cfg": cfg.model_dump()}
    ray_train.train_loop_per_worker({"method": "grpo", **config, "out_dir": str(tmp_path / "o")})

    assert "grpo" in ray_train.METHODS
    assert seen["cfg"] == cfg and seen["ray_context"] is True and seen["base_dir"] == tmp_path


def test_grpo_config_needs_whole_groups_per_batch():
    with pytest.raises(ValueError, match="multiple of it"):
        TrainConfig(method="grpo", per_device_batch_size=4, num_generations=3)
    TrainConfig(method="sft", per_device_batch_size=4, num_generations=3)  # only GRPO compares groups

"""GRPO with verifiable tool rewards: the T&R model is scored on what its tool call actually does.

    grpo(base_dir, train_rows, eval_rows, cfg, out_dir)   T&R (tr.method: grpo): SFT warm start on the T&R
                                                          conversations, then GRPO on their prompts
    run_grpo(model_dir, prompt_rows, cfg, out_dir, reward_funcs=[tool_reward])   GRPO alone

Prompt rows (``grpo_prompts``) hold the runtime's own prompt (phases.inference.tools.build_prompt: system prompt
with the tools, user turn with the Context block) and what a good completion does. ``tool_reward`` checks it for real:

- python_eval: 1.0 when the completion holds a well-formed python_eval call whose expression, run in the
  sandbox (tools.python_eval), gives the expected result; 0.25 for a well-formed python_eval call that gives
  anything else; 0 without one.
- search_docs: 1.0 for a well-formed search_docs call with a non-empty query; 0 otherwise.
- answer (a question its Context block answers): 1.0 for a non-empty answer with no tool call, 0 otherwise,
  so GRPO does not teach the model to call a tool for everything.

GRPO samples ``cfg.num_generations`` completions per prompt (``cfg.max_completion_length`` tokens) and pushes
up those scoring above their group's mean; no KL term (trl's default beta 0: no reference forward pass). It
writes the same folder as phases.training.train (adapter/, merged/, train_summary.json) with the reward curve added:
``rewards``, ``first_reward``, ``last_reward``. Generation uses transformers (no vLLM); numerics, CPU/GPU and
Ray reporting come from phases.training.train's helpers.
"""

import functools
import json
import shutil
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import TrainConfig
from finetune_assets.phases.inference.sandbox import python_eval
from finetune_assets.phases.inference.tools import TOOL_CALL_OPEN, parse_tool_call
from finetune_assets.phases.training import artifacts, train
from finetune_assets.phases.training.adapters import peft_config
from finetune_assets.phases.training.artifacts import SUMMARY_FILE
from finetune_assets.phases.training.train import (
    as_dataset,
    common_args,
    load_model,
    scratch_dir,
    train_and_save,
)

KINDS = {"tr_python_eval": "python_eval", "tr_search_docs": "search_docs"}

WRONG_RESULT_REWARD = 0.25  # a well-formed call to the right tool, but not the expected value


def grpo_prompts(rows: list[dict]) -> list[dict]:
    """T&R conversations -> GRPO prompt rows {prompt, kind, expected}: the messages before the first
    assistant turn; kind python_eval (expected: the sandbox result the conversation's tool turn holds),
    search_docs (expected: "") or answer (expected: the reference answer)."""
    out = []
    for row in rows:
        messages = list(row["messages"])
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
        if not first:
            continue
        kind = KINDS.get(row.get("generator", ""), "answer")
        expected = messages[first]["content"] if kind == "answer" else ""
        if kind == "python_eval":
            expected = json.loads(messages[first + 1]["content"])["result"]
        out.append({"prompt": messages[:first], "kind": kind, "expected": expected})
    return out


@functools.lru_cache(maxsize=4096)
def _sandbox_result(expression: str) -> str | None:
    result = python_eval(expression)
    return result["result"] if result.get("ok") else None


def _text(completion) -> str:
    """trl passes conversational completions as [{"role": "assistant", "content": ...}], plain ones as str."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion)


def score_completion(text: str, kind: str, expected: str) -> float:
    """The verifiable reward of one completion (see the module docstring)."""
    call = parse_tool_call(text)
    if kind == "answer":
        return float(call is None and TOOL_CALL_OPEN not in text and bool(text.strip()))
    if call is None or call["name"] != kind:
        return 0.0
    args = call["arguments"]
    if kind == "search_docs":
        return float(isinstance(args.get("query"), str) and bool(args["query"].strip()))
    expression = args.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        return 0.0
    return 1.0 if _sandbox_result(expression.strip()) == expected else WRONG_RESULT_REWARD


def tool_reward(completions: list, kind: list[str], expected: list[str], **_) -> list[float]:
    """trl reward function: one score per completion; ``kind`` and ``expected`` are the dataset columns."""
    return [score_completion(_text(c), k, e) for c, k, e in zip(completions, kind, expected, strict=True)]


def run_grpo(
    model_dir: Path,
    rows: list[dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    reward_funcs: list | None = None,
    ray_context: bool = False,
    extra: dict | None = None,
    deepspeed: dict | None = None,
) -> dict:
    """GRPO from ``model_dir`` on prompt rows ({prompt, ...columns the rewards read}) for ``cfg.grpo_steps``
    at ``cfg.grpo_learning_rate``; ``reward_funcs`` default to [tool_reward]."""
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_model(model_dir, cfg)
    with scratch_dir() as scratch:
        common = common_args(cfg, scratch, deepspeed)
        common.pop("max_length", None)  # GRPOConfig bounds the completion only (max_completion_length)
        common.update(max_steps=cfg.grpo_steps, learning_rate=cfg.grpo_learning_rate)
        args = GRPOConfig(
            **common, num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs or [tool_reward],
            args=args,
            train_dataset=as_dataset(rows),
            processing_class=tokenizer,
            peft_config=peft_config(cfg),
        )
        summary = train_and_save(trainer, tokenizer, "grpo", out_dir, ray_context=ray_context, extra=extra)
    rewards = [float(h["reward"]) for h in trainer.state.log_history if "reward" in h and "loss" in h]
    summary.update(
        rewards=rewards,
        first_reward=rewards[0] if rewards else None,
        last_reward=rewards[-1] if rewards else None,
        num_generations=cfg.num_generations,
    )
    if (
        trainer.is_world_process_zero()
    ):  # the reward curve is known only after training: add it to the summary
        io.write_json(summary, Path(out_dir) / SUMMARY_FILE)
    return summary


def grpo(
    base_dir: Path,
    train_rows: list[dict],
    eval_rows: list[dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    ray_context: bool = False,
    deepspeed: dict | None = None,
) -> dict:
    """The T&R stage with GRPO: SFT on the T&R conversations (cfg.max_steps, the model learns the call
    format), then GRPO on the same conversations' prompts with tool_reward. The warm-start folder is
    removed once the GRPO model is saved; its losses are kept in the summary as sft_*."""
    out_dir = Path(out_dir)
    warm = out_dir.with_name(f"{out_dir.name}-sft-warm-start")
    # The SFT part reports nothing to Ray: the GRPO part owns the run's checkpoints and metrics.
    warm_summary = train.sft(base_dir, train_rows, eval_rows, cfg, warm, deepspeed=deepspeed)
    _wait_for_rank_zero()  # rank 0 saved the warm start; every rank loads it
    extra = {
        f"sft_{k}": warm_summary[k]
        for k in ("steps", "first_loss", "last_loss", "eval_loss")
        if k in warm_summary
    }
    summary = run_grpo(
        warm / "merged",
        grpo_prompts(train_rows),
        cfg,
        out_dir,
        ray_context=ray_context,
        extra=extra,
        deepspeed=deepspeed,
    )
    _wait_for_rank_zero()
    if not _distributed() or _rank() == 0:
        shutil.rmtree(warm, ignore_errors=True)
        artifacts.progress_path(warm).unlink(missing_ok=True)
        artifacts.step_log_path(warm).unlink(missing_ok=True)
    return summary


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _distributed() else 0


def _wait_for_rank_zero() -> None:
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


__all__ = ["grpo", "run_grpo", "grpo_prompts", "tool_reward", "score_completion"]

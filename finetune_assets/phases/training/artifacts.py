"""What a training run leaves behind: per-step metrics and progress, the summary, the saved folders, the reuse
key.

    out_dir/adapter/             LoRA adapter (peft); absent after full fine-tuning; after prompt or prefix
                                 tuning the virtual tokens + tokenizer, the loadable folder itself
    out_dir/merged/              full model + tokenizer + chat template (from_pretrained-able); absent
                                 after prompt or prefix tuning (nothing to merge)
    out_dir/train_summary.json   {method, steps, losses, first_loss, last_loss, trainable_params, ...}
    .<out_dir>.progress.json     beside out_dir: {pid, step, max_steps} after every step
    .<out_dir>.steps.jsonl       beside out_dir: one line per logged step (loss, learning rate, tokens/s),
                                 appended while training runs; the driver streams it into the run's logs

Folders are written atomically (io.atomic_dir) and on rank 0 only. ``training_key`` hashes what a run
depends on, so that an unchanged run is reused instead of retrained (``reusable``).
"""

import contextlib
import hashlib
import json
import math
import time
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import ScalingConfig, TrainConfig
from finetune_assets.phases.inference.generation import ADAPTER_CONFIG

SUMMARY_FILE = "train_summary.json"

_DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")

# Per-step values kept in train_summary.json["step_metrics"] and logged to MLflow with their steps.
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "tokens_per_s", *_DPO_METRICS)


def step_timer():
    """A TrainerCallback stamping every log entry with tokens/s since the previous log (the steady-state
    speed per logging window, start-up excluded)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.last = None  # (time, tokens seen)

        def on_step_begin(self, args, state, control, **kwargs):
            if self.last is None:
                self.last = (time.perf_counter(), state.num_input_tokens_seen or 0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
            counted = self.last is not None and tokens > self.last[1] and now > self.last[0]
            entry = state.log_history[-1] if state.log_history else {}
            if "loss" in entry and counted:  # the trainer copied ``logs`` into log_history already
                entry["tokens_per_s"] = (tokens - self.last[1]) / (now - self.last[0])
            self.last = (now, tokens)

    return StepTimer()


def step_metrics(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value)]} for the STEP_METRICS present in a trainer's log history (training logs
    only: entries with a loss)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        if "loss" not in entry:
            continue
        for key in STEP_METRICS:
            value = entry.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                out.setdefault(key, []).append((int(entry["step"]), float(value)))
    return out


def trainable_snapshot(model) -> dict:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _param_changes(model, before: dict) -> tuple[int, float]:
    """(number of trainable tensors whose values changed, L2 norm of the whole change)."""
    changed, sq = 0, 0.0
    for name, p in model.named_parameters():
        if name in before:
            delta = p.detach().to("cpu", dtype=before[name].dtype) - before[name]
            norm = float(delta.float().pow(2).sum())
            changed += norm > 0
            sq += norm
    return changed, math.sqrt(sq)


def gather_zero3(trainer):
    """Under ZeRO-3 each rank holds a shard: save_model gathers full 16-bit weights
    (stage3_gather_16bit_weights_on_model_save) on every rank, and rank 0 reloads them unpartitioned."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    staging = Path(trainer.args.output_dir) / "zero3-final"
    trainer.save_model(str(staging))
    if not trainer.is_world_process_zero():
        return None
    unset_hf_deepspeed_config()  # reload as one plain model, not partitioned again
    from peft import PeftModel

    if isinstance(trainer.model, PeftModel):
        base_dir = trainer.model.peft_config["default"].base_model_name_or_path
        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(staging))
    return AutoModelForCausalLM.from_pretrained(staging)


@contextlib.contextmanager
def latest_ray_checkpoint():
    """The HF checkpoint folder inside the latest checkpoint Ray Train holds for this run (a restarted
    worker's starting point), or None on a first attempt."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        from ray.train.huggingface.transformers import RayTrainReportCallback

        yield str(Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME)


def checkpoint_step(folder: str | None) -> int:
    if folder is None:
        return 0
    return int(json.loads((Path(folder) / "trainer_state.json").read_text())["global_step"])


def progress_path(out_dir: Path) -> Path:
    """Where rank 0 records {pid, step} after every step (beside the output folder): how far a run is,
    and which process runs it."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.progress.json"


def step_log_path(out_dir: Path) -> Path:
    """Where rank 0 appends one JSON line per logged training step, beside the output folder."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.steps.jsonl"


def progress_writer(out_dir: Path):
    import os

    from transformers import TrainerCallback

    path, steps = progress_path(out_dir), step_log_path(out_dir)

    class ProgressWriter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            steps.parent.mkdir(parents=True, exist_ok=True)  # the output's folder may not exist yet
            steps.write_text("")  # this run's steps only (the reader starts over when the file shrinks)

        def on_step_end(self, args, state, control, **kwargs):
            io.write_json({"pid": os.getpid(), "step": state.global_step, "max_steps": state.max_steps}, path)

        def on_log(self, args, state, control, logs=None, **kwargs):
            entry = state.log_history[-1] if state.log_history else {}
            if "loss" not in entry:
                return
            line = {"step": int(state.global_step), "max_steps": int(state.max_steps)}
            line.update({k: entry[k] for k in STEP_METRICS if isinstance(entry.get(k), int | float)})
            steps.parent.mkdir(parents=True, exist_ok=True)
            with open(steps, "a") as out:  # one short line per write: a reader never sees half of one
                out.write(json.dumps(line) + "\n")

    return ProgressWriter()


def edge_mean(losses: list[float], *, first: bool, share: float = 0.1, cap: int = 5) -> float | None:
    """The mean of the first (or last) ``share`` of ``losses``, 1 to ``cap`` points: one logged step is
    too noisy to summarize a run (T&R batches carry few loss tokens: a demo logged "0.602 -> 3.119" from
    its single first and last steps)."""
    if not losses:
        return None
    k = max(1, min(cap, int(len(losses) * share)))
    edge = losses[:k] if first else losses[-k:]
    return sum(edge) / len(edge)


def run_summary(trainer, method: str, metrics: dict, wall_s: float, before: dict) -> dict:
    history = trainer.state.log_history
    losses = [float(h["loss"]) for h in history if "loss" in h]
    changed, delta_l2 = _param_changes(trainer.model, before)
    runtime = float(metrics.get("train_runtime", wall_s))
    tokens = int(trainer.state.num_input_tokens_seen or 0) or _tokens_from_dataset(trainer)
    summary = {
        "method": method,
        "steps": int(trainer.state.global_step),
        "losses": losses,
        "first_loss": edge_mean(losses, first=True),
        "last_loss": edge_mean(losses, first=False),
        "trainable_params": int(sum(t.numel() for t in before.values())),
        "changed_params": int(changed),
        "param_delta_l2": delta_l2,
        "train_runtime_s": runtime,
        "tokens_seen": tokens,
        "tokens_per_s": tokens / runtime if runtime > 0 else 0.0,
        "num_workers": int(trainer.args.world_size),
        "device": str(trainer.args.device),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "torch_threads": _torch_threads(),
        "step_metrics": step_metrics(history),
    }
    if method in ("dpo", "orpo"):
        for key in _DPO_METRICS:
            values = [float(h[key]) for h in history if key in h and "loss" in h]
            summary[key.replace("/", "_")] = values
        accs = summary["rewards_accuracies"]
        margins = summary["rewards_margins"]
        summary["last_reward_accuracy"] = accs[-1] if accs else None
        summary["last_reward_margin"] = margins[-1] if margins else None
    return summary


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _tokens_from_dataset(trainer) -> int:
    """Tokens trained on, from the tokenized dataset, for trainers whose batches transformers cannot count
    (ORPO's prompt_/chosen_/rejected_input_ids): mean tokens per row x rows seen."""
    dataset = trainer.train_dataset
    columns = [c for c in (dataset.column_names or []) if c.endswith("input_ids")]
    if not columns or not len(dataset):
        return 0
    per_row = sum(sum(len(ids) for ids in dataset[c]) for c in columns) / len(dataset)
    args = trainer.args
    rows = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
    return int(per_row * rows * args.world_size)


def save_folder(model, tokenizer, summary: dict, out_dir: Path) -> None:
    """adapter/ (when there is one) + merged/ + train_summary.json, appearing together in one rename. A
    prompt-learning adapter (prompt or prefix tuning) cannot be merged: adapter/ alone, with the tokenizer."""
    with io.atomic_dir(out_dir) as tmp:
        from peft import PeftModel

        if not isinstance(model, PeftModel):  # full fine-tuning: the model is the result
            model.save_pretrained(tmp / "merged")
        else:
            model.save_pretrained(tmp / "adapter")
            tokenizer.save_pretrained(tmp / "adapter")
            if not model.active_peft_config.is_prompt_learning:  # virtual tokens: nothing to merge
                _merged(model, tmp / "adapter").save_pretrained(tmp / "merged")
        if (tmp / "merged").is_dir():
            tokenizer.save_pretrained(tmp / "merged")
        io.write_json(summary, tmp / SUMMARY_FILE)


def _merged(peft_model, adapter_dir: Path):
    """The adapter merged into its base. A 4-bit (QLoRA) base cannot take the merge without rounding it
    away, so the base is reloaded in 16-bit and the saved adapter merged into that."""
    config = peft_model.get_base_model().config
    qlora_base = getattr(config, "qlora_base_dir", None)
    base_dir = qlora_base or getattr(config, "merge_base_dir", None)
    if base_dir is None:
        return peft_model.merge_and_unload()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # A bf16-stored LoRA base is reloaded in fp32: adding a small update to bf16 weights rounds much of it away.
    dtype = torch.bfloat16 if qlora_base else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    for key in ("qlora_base_dir", "merge_base_dir"):
        if hasattr(merged.config, key):
            delattr(merged.config, key)
    return merged


REUSE_FILE = "training_key.json"


def training_key(method: str, start: Path, data: dict, train_cfg: TrainConfig, scaling: ScalingConfig) -> str:
    """Content address of a training run: method, stage config, what changes the global batch or numerics
    (workers, GPU), the starting model's files and the training rows. Equal keys give the same model."""
    digest = hashlib.sha256()
    setup = {
        "method": method,
        "train": train_cfg.model_dump(),
        "num_workers": scaling.num_workers,
        "use_gpu": scaling.use_gpu,
        "start_model": io.content_hash(start),
    }
    digest.update(json.dumps(setup, sort_keys=True).encode())
    digest.update(json.dumps(data, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def reusable(out: Path, key: str) -> dict | None:
    """The record of the finished run in ``out`` when it was made with ``key`` and its model is intact."""
    record = out / REUSE_FILE
    model = (out / "merged").is_dir() or (out / "adapter" / ADAPTER_CONFIG).is_file()
    if not (record.is_file() and (out / "train_summary.json").is_file() and model):
        return None
    previous = json.loads(record.read_text())
    return previous if previous.get("training_key") == key else None


def loadable_dir(out_dir: Path) -> Path:
    """The loadable Hugging Face folder of a trained model: merged weights when training saved an adapter
    beside them; the adapter itself after prompt or prefix tuning (phases.inference.generation loads its
    base with it); else the folder itself (full fine-tuning, a resolved base model)."""
    out_dir = Path(out_dir)
    if (out_dir / "merged").is_dir():
        return out_dir / "merged"
    if (out_dir / "adapter" / ADAPTER_CONFIG).is_file():
        return out_dir / "adapter"
    return out_dir


def read_summary(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / SUMMARY_FILE).read_text())

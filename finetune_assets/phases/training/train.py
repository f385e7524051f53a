"""Training methods, one readable function each: config in, model folder out.

    sft(base_dir, train_rows, eval_rows, cfg, out_dir)  rows {messages}: assistant-only-loss SFT
    dpo(model_dir, rows, cfg, out_dir)  rows {prompt, chosen, rejected}: DPO, reference = adapter off
    kto(model_dir, rows, cfg, out_dir)  rows {prompt, completion, label}: KTO on unpaired feedback
    orpo(model_dir, rows, cfg, out_dir) rows {prompt, chosen, rejected}: ORPO, no reference model
    cpt(base_dir, corpus_texts, cpt_cfg, out_dir)  plain texts: causal-LM continued pretraining

``cfg.adapter`` picks LoRA (default), QLoRA (4-bit base, CUDA only) or full fine-tuning for every method.

Every method writes the same folder (docs/ARCHITECTURE.md), atomically and on rank 0 only:

    out_dir/adapter/             LoRA adapter (peft); absent after full fine-tuning; after prompt or prefix
                                 tuning the virtual tokens + tokenizer, the loadable folder itself
    out_dir/merged/              full model + tokenizer + chat template (from_pretrained-able); absent
                                 after prompt or prefix tuning (nothing to merge)
    out_dir/train_summary.json   {method, steps, losses, first_loss, last_loss, trainable_params,
                                  changed_params, param_delta_l2, train_runtime_s, tokens_per_s,
                                  num_workers, ...}

``ray_context=True`` is set by launch.ray_train inside a Ray Train worker: the trainer is wrapped with
``ray.train.huggingface.transformers.prepare_trainer`` and reports through ``RayTrainReportCallback``.
Numerics: ``cfg.precision`` "auto" trains under bf16 autocast where bf16 is native (phases.inference.hardware: a CPU
with AVX512-BF16/AMX, a GPU with bf16) and in fp32 elsewhere; weights and optimizer state stay fp32. On CPU:
use_cpu and no gradient checkpointing (5-40x slower on CPU), and trl's fused LM head projects only the
positions that carry a label (``score_label_positions_only``).
"""

import contextlib
import logging
import tempfile
import time
from pathlib import Path

from finetune_assets.config import CptConfig, TrainConfig
from finetune_assets.phases.inference.generation import ADAPTER_CONFIG
from finetune_assets.phases.inference.hardware import resolve_precision
from finetune_assets.phases.training.adapters import PROMPT_LEARNING, peft_config
from finetune_assets.phases.training.artifacts import (
    checkpoint_step,
    gather_zero3,
    latest_ray_checkpoint,
    progress_writer,
    run_summary,
    save_folder,
    step_timer,
    trainable_snapshot,
)
from finetune_assets.phases.training.examples import (
    general_text,
    pack_texts,
    to_kto_example,
    to_preference_example,
)
from finetune_assets.phases.training.layers import freeze_full_layers, layerwise_optimizer
from finetune_assets.phases.training.schedule import add_early_stopping, evaluation_args, schedule_args

log = logging.getLogger(__name__)


def is_zero3(ds_config: dict | None) -> bool:
    """Whether a DeepSpeed config (launch.deepspeed.deepspeed_config) partitions the weights (ZeRO-3)."""
    return isinstance(ds_config, dict) and ds_config.get("zero_optimization", {}).get("stage") == 3


def sft(
    base_dir: Path,
    train_rows: list[dict],
    eval_rows: list[dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    ray_context: bool = False,
    callbacks: list | None = None,
    deepspeed: dict | None = None,
) -> dict:
    """Supervised fine-tuning; the loss covers assistant turns only ({% generation %} markers).
    ``callbacks``: extra transformers TrainerCallbacks (bench/learning_curve.py saves adapters mid-run).
    ``deepspeed``: the DeepSpeed config of this worker (launch.ray_train passes it on GPU workers), as for
    every method here; None trains with plain DDP."""
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_model(base_dir, cfg)
    train_ds = as_dataset([{"messages": r["messages"]} for r in train_rows])
    eval_rows = eval_rows[: cfg.max_eval_rows]
    eval_ds = as_dataset([{"messages": r["messages"]} for r in eval_rows]) if eval_rows else None
    # virtual tokens go before each row: a pack would share one prompt across conversations
    packing = use_packing(cfg.packing, model) if cfg.adapter not in PROMPT_LEARNING else False
    with scratch_dir() as scratch:
        # bfd packing is padding-free: conversations are concatenated with restarting position ids, and the
        # model's attention masks across them (checked by packing_supported).
        # without packing, batches of similar lengths waste less compute on padding
        sampling = {} if packing else {"train_sampling_strategy": "group_by_length"}
        args = SFTConfig(
            **common_args(cfg, scratch, deepspeed, evaluation=eval_ds is not None),
            **sampling,
            assistant_only_loss=True,
            packing=packing,
            packing_strategy="bfd",
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=peft_config(cfg, model),
            callbacks=callbacks,
        )
        apply_layer_settings(trainer, cfg)
        add_early_stopping(trainer, cfg)
        return train_and_save(
            trainer, tokenizer, "sft", out_dir, ray_context=ray_context, extra={"packing": packing}
        )


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def use_packing(wanted, model) -> bool:
    """Whether SFT packs: ``wanted`` True/False, or "auto" = where attention runs packed rows as separate
    sequences (flash-attention's variable-length kernels). Elsewhere (sdpa/eager, every CPU) a packed batch is
    one long row under a dense block-diagonal mask, quadratic in the whole pack: measured on SmolLM2, 2 CPU
    threads, bf16 autocast, batch 4 x 256: 122 real tok/s packed vs 156 with length-grouped padded batches.
    Packing also needs the model to keep packed sequences apart (``packing_supported``); without, batches
    are length-grouped and the log says why."""
    attention = getattr(model.config, "_attn_implementation", None)
    if wanted == "auto":
        wanted = attention in VARLEN_ATTENTION
        if not wanted:
            log.info("packing off (auto): %s attention has no variable-length kernel", attention)
    if wanted and not packing_supported(model):
        log.warning("packing off: %s attends across packed sequences", model.config.model_type)
        return False
    return bool(wanted)


def packing_supported(model) -> bool:
    """Whether ``model`` keeps packed sequences apart: two token sequences run as one padding-free row
    (position ids restarting at the second) must give the same logits as each run alone. transformers 5
    builds a block-diagonal mask from the position ids for models using its masking utilities (Llama,
    SmolLM2, Qwen, ...); a model that attends across the boundary would leak one example into the next."""
    import torch

    first, second = torch.arange(3, 9)[None], torch.arange(11, 16)[None]
    # use_cache=False as in training (trl sets it): with a cache the packed-sequence mask is not built.
    with torch.inference_mode():
        alone = [model(input_ids=ids, use_cache=False).logits for ids in (first, second)]
        packed = model(
            input_ids=torch.cat([first, second], dim=1),
            position_ids=torch.cat([torch.arange(6), torch.arange(5)])[None],
            use_cache=False,
        ).logits
    # Rounding differs between one long and two short matmuls (SmolLM2-135M: 4e-4 on logits of ~10 in
    # fp32, more in bf16); attending across the boundary changes the second sequence's logits by whole units.
    tol = 1e-3 if packed.dtype == torch.float32 else 5e-2
    return torch.allclose(packed.float(), torch.cat(alone, dim=1).float(), rtol=tol, atol=tol)


def score_label_positions_only() -> bool:
    """Make trl's fused LM head (SFT, GRPO, RLOO) project only the positions that carry a label on CPU too.

    trl 1.16 compacts to labelled positions on Triton devices only: elsewhere it projects every position,
    prompt and padding included, so that compiled tile shapes stay fixed across batches (its reason: Neuron
    recompiles). Eager CPU compiles nothing, so the compaction is pure gain: the loss, entropy and token
    accuracy are those of the labelled positions either way. Measured on SmolLM2-135M, demo SFT rows
    (assistant-only loss), batch 4 x 256, 2 threads, bf16, steps 3-6 of one run, twice alternating:
    195 vs 154 real tokens/s (1.27x) with identical logged losses (phases.training.train.sft with and without it,
    2026-12-02; bench/train_bench.py measures the whole path against plain trl).
    Only trl's decision ``trl.trainer.utils._use_triton`` is replaced (its one use in that module is this
    choice; the kernels read their own). Returns whether the patch is in place; where trl has no such
    function the log says so and training runs as trl ships it."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        return False
    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:
        log.info("trl has no trainer.utils._use_triton: its fused LM head runs unchanged")
        return False
    if getattr(decide, "compacts_cpu", False):
        return True

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or decide(device)

    compact_on_cpu.compacts_cpu = True
    trl_utils._use_triton = compact_on_cpu
    return True


def dpo(
    model_dir: Path,
    rows: list[dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    ray_context: bool = False,
    deepspeed: dict | None = None,
) -> dict:
    """Direct preference optimisation; with an adapter the adapter-disabled model is the reference
    (ref_model=None), after full fine-tuning trl keeps a frozen copy."""
    from trl import DPOConfig, DPOTrainer

    examples = [to_preference_example(r) for r in rows]
    return _preference_run(
        "dpo", DPOConfig, DPOTrainer, model_dir, examples, cfg, out_dir, ray_context, deepspeed
    )


def kto(
    model_dir: Path,
    rows: list[dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    ray_context: bool = False,
    deepspeed: dict | None = None,
) -> dict:
    """KTO (Kahneman-Tversky optimisation) on unpaired feedback: rows {prompt, completion, label}; needs
    both desirable and undesirable examples. Reference as in dpo."""
    from trl import KTOConfig, KTOTrainer

    labels = {bool(r["label"]) for r in rows}
    if labels != {True, False}:
        raise ValueError(f"KTO needs both desirable and undesirable examples; got only label={labels}")
    examples = [to_kto_example(r) for r in rows]
    return _preference_run(
        "kto", KTOConfig, KTOTrainer, model_dir, examples, cfg, out_dir, ray_context, deepspeed
    )


def orpo(
    model_dir: Path,
    rows: list[dict],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    ray_context: bool = False,
    deepspeed: dict | None = None,
) -> dict:
    """ORPO (odds-ratio preference optimisation): SFT on chosen plus an odds-ratio penalty on rejected,
    no reference model (trl.experimental in trl 1.16). ``cfg.beta`` is ORPO's lambda."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    examples = [to_preference_example(r) for r in rows]
    return _preference_run(
        "orpo", ORPOConfig, ORPOTrainer, model_dir, examples, cfg, out_dir, ray_context, deepspeed
    )


def _preference_run(
    method, config_cls, trainer_cls, model_dir, examples, cfg, out_dir, ray_context, deepspeed
) -> dict:
    """The part dpo, kto and orpo share: load, configure (``cfg.beta``), train, save. DPO and KTO take
    ``ref_model=None`` (adapter off, or a frozen copy); ORPO has no reference model at all."""
    model, tokenizer = load_model(model_dir, cfg)
    reference = {} if method == "orpo" else {"ref_model": None}
    # The reference is frozen: its log-probs are the same every epoch, so compute them once up front
    # (trl's precompute_ref_log_probs) instead of an extra forward pass per step. ORPO has no reference.
    method_args = {} if method == "orpo" else {"precompute_ref_log_probs": cfg.precompute_ref_log_probs}
    if method == "dpo" and cfg.sft_loss_weight > 0:  # RPO: DPO + NLL of the chosen answer
        method_args |= {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.sft_loss_weight]}
    with scratch_dir() as scratch:
        trainer = trainer_cls(
            model=model,
            **reference,
            args=config_cls(**common_args(cfg, scratch, deepspeed), beta=cfg.beta, **method_args),
            train_dataset=as_dataset(examples),
            processing_class=tokenizer,
            peft_config=peft_config(cfg, model),
        )
        apply_layer_settings(trainer, cfg)
        return train_and_save(trainer, tokenizer, method, out_dir, ray_context=ray_context)


def cpt(
    base_dir: Path,
    corpus_texts: list[str],
    cfg: CptConfig,
    out_dir: Path,
    *,
    train_cfg: TrainConfig | None = None,
    ray_context: bool = False,
    deepspeed: dict | None = None,
) -> dict:
    """Continued pretraining: LoRA causal LM on the corpus packed into max_length blocks, mixed with a
    ``cfg.general_mix_ratio`` share (by tokens) of general English text (the interpreter's stdlib docstrings),
    which limits forgetting. ``train_cfg`` gives batch size, max_length and LoRA settings (defaults
    otherwise); ``cfg`` gives the length (one epoch unless max_steps is set), learning rate and adapter
    (lora or full)."""
    from trl import SFTConfig, SFTTrainer

    train_cfg = (train_cfg or TrainConfig()).model_copy(
        update={"max_steps": cfg.max_steps or 1, "learning_rate": cfg.learning_rate, "adapter": cfg.adapter}
    )
    model, tokenizer = load_model(base_dir, train_cfg)
    blocks = pack_texts(tokenizer, corpus_texts, general_text(), cfg.general_mix_ratio, train_cfg.max_length)
    if not blocks:
        raise ValueError("continued pretraining got no text: the corpus is empty")
    with scratch_dir() as scratch:
        common = common_args(train_cfg, scratch, deepspeed)
        if cfg.max_steps is None:  # one epoch over the blocks
            common.update(max_steps=-1, num_train_epochs=1)
        args = SFTConfig(**common, packing=False, completion_only_loss=False)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=as_dataset([{"input_ids": b} for b in blocks]),
            processing_class=tokenizer,
            peft_config=peft_config(train_cfg),
        )
        return train_and_save(
            trainer, tokenizer, "cpt", out_dir, ray_context=ray_context, extra={"num_blocks": len(blocks)}
        )


def as_dataset(records: list[dict]):
    from datasets import Dataset

    if not records:
        raise ValueError("no training rows: the dataset is empty")
    return Dataset.from_list(records)


def scratch_dir():
    """The trainer's output_dir: checkpoints are written here and (under Ray) copied to the run's storage,
    so the folder itself is thrown away."""
    return tempfile.TemporaryDirectory(prefix="fa-trainer-")


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class QLoRAUnavailable(RuntimeError):
    """QLoRA was asked for where there is no CUDA GPU."""


def load_model(model_dir: Path, cfg: TrainConfig):
    """(model, tokenizer) for training: float32 weights (bf16 autocast where native, see common_args); for
    QLoRA the base is loaded in 4-bit NF4 with double quantization (bitsandbytes) and prepared for k-bit
    training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    if (Path(model_dir) / ADAPTER_CONFIG).is_file():
        raise ValueError(
            f"{model_dir} is a prompt-learning adapter (adapter: prompt or prefix), which cannot be merged "
            "into weights to train further: give the stage that trains from it a model with weights, or "
            "use adapter: lora for the earlier stage"
        )
    score_label_positions_only()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.adapter != "qlora":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_base_dtype(cfg))
        if model.dtype == torch.bfloat16:
            model.config.merge_base_dir = str(model_dir)  # _merged merges into the fp32 weights from here
        return model, tokenizer
    if not _on_cuda():
        raise QLoRAUnavailable(
            "adapter 'qlora' loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU, and this "
            "machine has none: use adapter: lora (the same adapters on a full-precision base) or run on a GPU "
            "worker (scaling.use_gpu: true)"
        )
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=compute)
    model.config.qlora_base_dir = str(model_dir)  # where save_folder reloads the base to merge
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), tokenizer


def _base_dtype(cfg: TrainConfig):
    """The frozen base's storage dtype. LoRA under bf16 stores it in bf16: autocast would cast every weight
    to bf16 for each matmul anyway (one LoRA SFT step of SmolLM2, 2 threads: 199 tok/s vs 156 with fp32
    storage); the adapter stays fp32 (peft upcasts adapter weights) and so does its optimizer state. Full
    fine-tuning trains every weight, which therefore stays fp32."""
    import torch

    bf16 = cfg.adapter == "lora" and resolve_precision(cfg.precision)[0] == "bf16"
    return torch.bfloat16 if bf16 else torch.float32


def apply_layer_settings(trainer, cfg: TrainConfig) -> None:
    """cfg.freeze_layers for full fine-tuning and cfg.layerwise_lr_decay's optimizer, on a built trainer
    (after peft wrapped the model, so the adapter's weights are the trainable ones)."""
    if cfg.adapter == "full":
        freeze_full_layers(trainer.model, cfg)
    optimizer = layerwise_optimizer(trainer.model, cfg)
    if optimizer is not None and trainer.args.deepspeed:
        raise ValueError("layerwise_lr_decay builds its own optimizer, which DeepSpeed replaces: set it to 1")
    if optimizer is not None:
        trainer.optimizer = optimizer  # the trainer schedules it (each group's lr scaled by the schedule)


def common_args(
    cfg: TrainConfig, output_dir: str, deepspeed: dict | None = None, evaluation: bool = False
) -> dict:
    """Arguments shared by SFTConfig and DPOConfig (trl 1.16 / transformers 5 names). ``evaluation``: the
    trainer has a validation set, so cfg.eval_steps and early stopping apply."""
    cuda = _on_cuda()
    precision, _ = resolve_precision(cfg.precision)
    return {
        **schedule_args(cfg),
        "output_dir": output_dir,
        "learning_rate": cfg.learning_rate,
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "per_device_eval_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "max_length": cfg.max_length,
        "logging_steps": cfg.logging_steps,
        "seed": cfg.seed,
        "report_to": "none",
        # Checkpoints land in the scratch output_dir; under Ray, RayTrainReportCallback copies each one to
        # the run's storage (the artifact store) and launch.ray_train resumes from the latest after a failure.
        "save_strategy": "steps" if cfg.checkpoint_steps else "no",
        "save_steps": cfg.checkpoint_steps or 500,
        "save_total_limit": 1,
        "eval_strategy": "no",
        **(evaluation_args(cfg) if evaluation else {}),
        "use_cpu": not cuda,
        # bf16 autocast (on CPU too: use_cpu + bf16 runs torch.autocast("cpu")); the weights stay fp32
        "bf16": precision == "bf16",
        "activation_checkpointing": False,  # transformers 5.23's name for gradient_checkpointing (trl: True)
        "gradient_checkpointing": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",  # real token counts for tokens_per_s
        "deepspeed": deepspeed,
    }


def train_and_save(trainer, tokenizer, method: str, out_dir: Path, *, ray_context: bool, extra=None) -> dict:
    """Train, evaluate (when an eval set was given), then on rank 0 write adapter/, merged/, summary."""
    if ray_context:
        from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

        trainer.add_callback(RayTrainReportCallback())
        trainer = prepare_trainer(trainer)

    trainer.add_callback(step_timer())
    if trainer.is_world_process_zero():
        trainer.add_callback(progress_writer(Path(out_dir)))
    before = trainable_snapshot(trainer.model)
    started = time.perf_counter()
    with latest_ray_checkpoint() if ray_context else contextlib.nullcontext() as resume:
        resumed_from = checkpoint_step(resume)
        output = trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started
    eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}

    summary = run_summary(trainer, method, output.metrics, wall, before)
    summary.update(extra or {})
    summary["resumed_from_step"] = resumed_from
    summary["planned_steps"] = int(trainer.state.max_steps)
    summary["stopped_early"] = int(summary["steps"] < summary["planned_steps"])  # a number: MLflow logs it
    if trainer.state.best_metric is not None:  # evaluated during training (eval_steps)
        summary["best_metric"] = float(trainer.state.best_metric)
        best = trainer.state.best_model_checkpoint  # ".../checkpoint-<step>"
        summary["best_checkpoint_step"] = int(Path(best).name.rsplit("-", 1)[-1]) if best else None
    if "eval_loss" in eval_metrics:
        summary["eval_loss"] = eval_metrics["eval_loss"]
    model = trainer.model
    if is_zero3(getattr(trainer.args, "deepspeed", None)):  # every rank gathers the partitioned weights
        model = gather_zero3(trainer)
    if not trainer.is_world_process_zero():
        return summary
    save_folder(model, tokenizer, summary, Path(out_dir))
    return summary

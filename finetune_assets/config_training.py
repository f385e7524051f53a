"""A training stage's settings (the recipe's ``sft``, ``dpo`` and ``tr`` sections): adapter, method, schedule,
evaluation and early stopping, per-layer settings, numerics, checkpoints."""

from typing import Literal

from pydantic import Field, model_validator

from finetune_assets.config_base import ConfigSection


class TrainConfig(ConfigSection):
    """Hyperparameters of one training stage (sft, dpo, tr)."""

    # lora: LoRA adapters on a full-precision base; qlora: the same on a 4-bit (NF4) base, CUDA only;
    # full: every weight trained, no adapter. prompt / prefix: peft prompt learning, the model's weights all
    # frozen: prompt tuning learns num_virtual_tokens input embeddings put before every sequence, prefix tuning
    # learns keys and values for that many positions in every layer. These cannot be merged, so the stage
    # writes adapter/ without merged/ and inference loads base + adapter (phases.inference.virtual_tokens).
    adapter: Literal["lora", "qlora", "full", "prompt", "prefix"] = "lora"
    num_virtual_tokens: int = Field(20, ge=1)
    # prompt tuning only: start the virtual tokens from this text's token embeddings (peft's TEXT init)
    # instead of random ones; the text is repeated or cut to num_virtual_tokens.
    prompt_init_text: str | None = None
    # dpo section only: the preference method. kto trains on unpaired thumbs up/down (human binary feedback
    # plus each pair split in two); orpo needs no reference model.
    preference_method: Literal["dpo", "kto", "orpo"] = "dpo"
    # tr section only: sft trains on the T&R conversations; grpo runs that same SFT (max_steps, learning_rate)
    # as a warm start, then grpo_steps of GRPO (phases.training.grpo) with verifiable tool rewards: the sandbox's real
    # result for python_eval prompts, a well-formed search_docs call for search prompts.
    method: Literal["sft", "grpo"] = "sft"
    grpo_steps: int = Field(30, ge=1)
    grpo_learning_rate: float = Field(2e-5, gt=0)
    # GRPO: completions sampled per prompt (the group whose rewards are compared) and their length in
    # tokens; a batch (per_device_batch_size x gradient_accumulation_steps completions) holds whole groups.
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(64, ge=4)
    max_steps: int = Field(30, ge=1)
    # Epochs instead of steps: when set, training runs this many passes over the data and max_steps is not
    # used (transformers' num_train_epochs; fractions allowed).
    epochs: float | None = Field(None, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    # The learning-rate schedule (transformers' lr_scheduler_type): warmup over warmup_ratio of the steps or
    # warmup_steps steps (one of them), then linear or cosine decay to 0, or constant.
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)  # AdamW's decoupled weight decay (0.01 is common)
    max_grad_norm: float = Field(1.0, gt=0)  # gradient clipping
    # Evaluate on the validation split every eval_steps steps (0: once, after training). With
    # early_stopping_patience > 0, training stops after that many evaluations without an improvement of
    # best_metric by more than early_stopping_min_delta, and the best evaluated checkpoint is the result
    # (load_best_at_end). SFT stages only: preference data has no validation split.
    eval_steps: int = Field(0, ge=0)
    early_stopping_patience: int = Field(0, ge=0)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    best_metric: str = "eval_loss"
    greater_is_better: bool = False
    load_best_at_end: bool = True
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(256, ge=16)
    # SFT: pack several conversations into each max_length row (padding-free, position ids restart per
    # conversation) when the model keeps packed conversations apart (a probe at start-up; length-grouped
    # padded batches otherwise). auto: pack where attention has variable-length kernels (flash-attention on
    # GPU); on CPU a pack is one long row under a dense mask, slower than length-grouped batches.
    packing: bool | Literal["auto"] = "auto"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: str | list[str] = "all-linear"
    # INST stage: per-source mixing of the instruction set's train split, {generator: factor}: each named
    # generator's rows are resampled to factor x their count (2 doubles a source, 0.5 halves it, 0 drops it;
    # seeded), unnamed ones stay as they are. The validation split is never resampled.
    mix_weights: dict[str, float] = {}
    # The first K decoder layers get no update: no LoRA adapter there, or (full) frozen with the embeddings.
    freeze_layers: int = Field(0, ge=0)
    # Layer-wise learning-rate decay: decoder layer i of L learns at learning_rate * d^(L-1-i) (1: off).
    layerwise_lr_decay: float = Field(1.0, gt=0, le=1)
    beta: float = Field(0.1, gt=0)  # DPO only
    # DPO only: add this weight x the NLL of the chosen answer to the DPO loss (RPO, trl loss_type
    # ["sigmoid", "sft"]). DPO alone lowers the chosen answer's likelihood too, and on small pair sets it
    # undoes what SFT taught; the NLL term keeps the chosen answers likely. 0 = plain DPO.
    sft_loss_weight: float = Field(0.0, ge=0)
    # auto: bf16 mixed precision where it is native (a CPU with AVX512-BF16/AMX, a GPU with bf16), fp32
    # elsewhere (phases.inference.hardware says why in the log); trainable weights and optimizer state stay fp32.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # DPO/KTO with an adapter: compute the frozen reference's log-probs once over the data before training
    # instead of a second forward pass on every step.
    precompute_ref_log_probs: bool = True
    logging_steps: int = Field(1, ge=1)
    # Held-out loss after training on at most this many validation rows (the full split can cost more than
    # the training itself on CPU).
    max_eval_rows: int = Field(64, ge=0)
    # Save a resumable checkpoint (weights, optimizer, scheduler, RNG) every this many steps; under Ray it
    # goes to the artifact store and a restarted worker resumes from the latest one. 0: no checkpoints.
    checkpoint_steps: int = Field(50, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _schedule(self):
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("early_stopping_patience needs eval_steps > 0 (how often to evaluate)")
        negative = sorted(g for g, w in self.mix_weights.items() if w < 0)
        if negative:
            raise ValueError(f"mix_weights must be >= 0 (0 drops a source); negative for {negative}")
        return self

    @model_validator(mode="after")
    def _whole_grpo_groups(self):
        completions = self.per_device_batch_size * self.gradient_accumulation_steps
        if self.method == "grpo" and completions % self.num_generations:
            raise ValueError(
                f"method grpo compares num_generations ({self.num_generations}) completions of each prompt: "
                f"per_device_batch_size x gradient_accumulation_steps ({completions}) must be a multiple of it"
            )
        return self

    @model_validator(mode="after")
    def _prompt_learning_trains_no_layer(self):
        if self.adapter not in ("prompt", "prefix"):
            if self.prompt_init_text is not None:
                raise ValueError("prompt_init_text is for adapter: prompt; remove it or set adapter: prompt")
            return self
        if self.prompt_init_text is not None and self.adapter != "prompt":
            raise ValueError("prompt_init_text initializes prompt tuning's embeddings: set adapter: prompt")
        if self.method == "grpo":
            raise ValueError(
                f"method grpo continues its SFT warm start from merged weights, which adapter {self.adapter!r} "
                "does not have: use method sft or adapter lora"
            )
        if self.freeze_layers or self.layerwise_lr_decay != 1.0:
            raise ValueError(
                f"adapter {self.adapter!r} trains no decoder layer: freeze_layers and layerwise_lr_decay do not "
                "apply (set them to 0 and 1)"
            )
        if self.packing is True:
            raise ValueError(
                f"adapter {self.adapter!r} puts its virtual tokens before each row, which would join the packed "
                "conversations: set packing to false or auto"
            )
        return self

    @model_validator(mode="after")
    def _sft_loss_weight_is_dpo_only(self):
        if self.sft_loss_weight > 0 and self.preference_method != "dpo":
            raise ValueError(
                f"sft_loss_weight (RPO) adds the chosen answer's NLL to the DPO loss; preference_method is "
                f"{self.preference_method!r}: set sft_loss_weight to 0 or preference_method to dpo"
            )
        return self


FOLLOWERS = {
    "sft": "dpo",
    "dpo": "tr",
}  # inst -> dpo -> tr: each stage continues from its predecessor's weights


def check_continuable(stage: str, cfg: TrainConfig) -> None:
    """Raise when ``stage``'s result must give weights to the next stage and cfg trains virtual tokens only."""
    if stage in FOLLOWERS and cfg.adapter in ("prompt", "prefix"):
        raise ValueError(
            f"{stage}.adapter is {cfg.adapter!r}, but the {FOLLOWERS[stage]} stage continues from the {stage} "
            "model's weights, and virtual tokens cannot be merged into them: use prompt or prefix tuning on "
            "the tr stage (the last), or search it in a sweep"
        )

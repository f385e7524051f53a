"""DeepSpeed ZeRO-2/3 configs for the Hugging Face Trainer integration (GPU runs only).

In a Ray Train worker, with ``ds = trainer_deepspeed_arg(scaling.use_gpu, stage)``:

    if ds is not None:
        init_distributed_for_deepspeed()         # attach DeepSpeed to the group TorchTrainer opened
    args = SFTConfig(..., deepspeed=ds)          # or DPOConfig/KTOConfig/...: every TrainingArguments
    with zero3_init_context(ds):                 # ZeRO-3: from_pretrained partitions weights as it loads
        model = AutoModelForCausalLM.from_pretrained(...)

The config uses ``"auto"`` wherever a value already lives in TrainingArguments (batch size, accumulation,
clipping, precision, optimizer hyperparameters) or depends on the model (bucket sizes from hidden_size):
transformers fills them (``HfTrainerDeepSpeedConfig.trainer_config_process`` when the TrainingArguments are
built, ``trainer_config_finalize`` once the model is known), so a recipe states each number once.

No optimizer block unless the optimizer is offloaded: the Trainer then builds its own optimizer
(``TrainConfig``'s choice) and its own LR scheduler. With ``offload_optimizer`` DeepSpeed insists on its CPU
Adam, so the config names ``AdamW`` (DeepSpeedCPUAdam, a C++ op JIT-compiled on first use). The LR scheduler
stays the Trainer's in both cases (no ``scheduler`` block).

deepspeed and transformers are imported inside functions: importing them costs seconds and DeepSpeed logs
an accelerator warning on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

ALLOWED_STAGES = (2, 3)

# Sizes from the Hugging Face DeepSpeed examples; model-dependent sizes are "auto" (filled from hidden_size).
_ALLGATHER_BUCKET_SIZE = 200_000_000
_STAGE3_SUB_GROUP_SIZE = 1_000_000_000
_STAGE3_MAX_LIVE_PARAMETERS = 1_000_000_000
_STAGE3_MAX_REUSE_DISTANCE = 1_000_000_000
# Keys zero.Init's own config check needs as numbers while the model loads (before the Trainer fills them).
_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _check_stage(stage: Any) -> None:
    if isinstance(stage, bool) or stage not in ALLOWED_STAGES:
        allowed = " or ".join(str(s) for s in ALLOWED_STAGES)
        raise ValueError(f"DeepSpeed ZeRO stage must be {allowed}, got {stage!r}")


def deepspeed_config(
    stage: int,
    *,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    bf16: bool | None = None,
) -> dict:
    """A DeepSpeed config dict for ``TrainingArguments(deepspeed=...)`` (ZeRO stage 2 or 3).

    bf16: None leaves precision to the TrainingArguments (``bf16``/``fp16`` blocks "auto"); True pins bf16 on
    (fp16 off); False pins bf16 off and leaves fp16 to the TrainingArguments. A pinned value that disagrees
    with the TrainingArguments makes the Trainer raise (its mismatch check), which is what we want.
    offload_params (parameter offload to CPU) exists only in ZeRO-3.
    """
    _check_stage(stage)
    if offload_params and stage != 3:
        raise ValueError("offload_params needs ZeRO stage 3 (ZeRO-2 does not partition parameters)")

    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero |= {
            "allgather_partitions": True,
            "allgather_bucket_size": _ALLGATHER_BUCKET_SIZE,
            "reduce_scatter": True,
        }
    else:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "sub_group_size": _STAGE3_SUB_GROUP_SIZE,
            "stage3_max_live_parameters": _STAGE3_MAX_LIVE_PARAMETERS,
            "stage3_max_reuse_distance": _STAGE3_MAX_REUSE_DISTANCE,
            # save_pretrained/save_model gather the partitions into one full 16-bit state dict.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto" if bf16 is None else bf16},
        "fp16": {"enabled": False if bf16 else "auto"},
        "zero_optimization": zero,
        "steps_per_print": 2000,
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def trainer_deepspeed_arg(
    use_gpu: bool,
    stage: int | None,
    *,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict | None:
    """The value for ``SFTConfig/DPOConfig(deepspeed=...)``: None on CPU or without a stage, else the config.

    DeepSpeed is for GPU runs only in this product; a wrong stage raises even on CPU so a recipe error shows
    before anyone rents a GPU.
    """
    if stage is not None:
        _check_stage(stage)
    if not use_gpu or stage is None:
        return None
    return deepspeed_config(stage, offload_optimizer=offload_optimizer, offload_params=offload_params)


def init_distributed_for_deepspeed() -> bool:
    """Attach DeepSpeed's comm layer to the torch.distributed group Ray Train's TorchTrainer already opened.

    Call it in the worker before loading the model under ZeRO-3 (``zero.Init`` talks through DeepSpeed's comm
    layer and fails in ``from_pretrained`` without it). When torch.distributed is initialised,
    ``deepspeed.init_distributed`` only wraps the existing process group (no new rendezvous, no MPI discovery):
    it is given that group's backend (``nccl`` on Ray GPU workers). Returns False, doing nothing, when
    torch.distributed is not initialised (outside a Ray Train worker): then the Trainer/accelerate set it up.
    Calling it twice is harmless.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    return True


def _zero_init_config(ds_config: dict) -> dict:
    """A copy zero.Init accepts before the Trainer filled it: batch "auto"s become 1 (as accelerate does).

    zero.Init only checks the batch arithmetic; the Trainer's own copy gets the real values.
    """
    config = copy.deepcopy(ds_config)
    for key in _BATCH_KEYS:
        if config.get(key, "auto") == "auto":
            config[key] = 1
    if config.get("train_batch_size") == "auto":
        del config["train_batch_size"]
    return config


@contextlib.contextmanager
def _registered_hf_deepspeed_config(ds_config: dict) -> Iterator[Any]:
    from transformers.integrations import deepspeed as hf_ds

    previous = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)  # transformers' module-level weakref
    hf_config = hf_ds.HfDeepSpeedConfig(_zero_init_config(ds_config))  # registers itself (weakref)
    try:
        yield hf_config
    finally:
        current = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
        if current is not None and current() is hf_config:  # nobody (e.g. new TrainingArguments) took over
            if previous is not None and previous() is not None:
                hf_ds.set_hf_deepspeed_config(previous())
            else:
                hf_ds.unset_hf_deepspeed_config()


def zero3_init_context(ds_config: dict | None) -> contextlib.AbstractContextManager:
    """Context to load a model in: under ZeRO-3, ``from_pretrained`` partitions weights while loading.

    transformers decides that from a module-level weakref to a ``transformers.integrations.HfDeepSpeedConfig``
    (the object must stay alive while the model loads). This creates and registers one for the block and
    yields it; on exit it restores the previous registration unless someone registered another meanwhile
    (building TrainingArguments(deepspeed=...) registers the Trainer's own). ZeRO-2, or no DeepSpeed: a null
    context. Run ``init_distributed_for_deepspeed()`` first.

    Creating the TrainingArguments before ``from_pretrained`` (and keeping them alive) also enables ZeRO-3
    loading, without this context.
    """
    if ds_config is None or ds_config.get("zero_optimization", {}).get("stage") != 3:
        return contextlib.nullcontext()
    return _registered_hf_deepspeed_config(ds_config)

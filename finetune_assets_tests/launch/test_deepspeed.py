"""DeepSpeed configs, checked on CPU by DeepSpeed's own config classes and transformers' "auto" filling.

No engine starts here (that JIT-compiles C++ ops for minutes): DeepSpeedConfig/DeepSpeedZeroConfig are the
pydantic models deepspeed.initialize validates with, and TrainingArguments(deepspeed=...) runs transformers'
trainer_config_process; trainer_config_finalize gets a stand-in model that has only ``config.hidden_size``.
"""

from types import SimpleNamespace

import pytest

from finetune_assets.launch.deepspeed import (
    deepspeed_config,
    init_distributed_for_deepspeed,
    trainer_deepspeed_arg,
    zero3_init_context,
)

HIDDEN = 64
VARIANTS = [
    pytest.param(2, {}, id="zero2"),
    pytest.param(2, {"offload_optimizer": True}, id="zero2-offload"),
    pytest.param(3, {}, id="zero3"),
    pytest.param(3, {"offload_optimizer": True, "offload_params": True}, id="zero3-offload"),
    pytest.param(3, {"bf16": False}, id="zero3-no-bf16"),
]


@pytest.fixture(autouse=True)
def _no_leftover_hf_deepspeed_config():
    """TrainingArguments(deepspeed=...) registers a global weakref that turns on ZeRO-3 loading: clear it."""
    from transformers.integrations import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    yield
    unset_hf_deepspeed_config()
    assert not is_deepspeed_zero3_enabled()


def _autos(node, path=""):
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _autos(v, f"{path}.{k}" if path else k)]
    return [path] if node == "auto" else []


def _filled(ds: dict, tmp_path, **train_args) -> tuple[dict, object]:
    """The config as the Trainer hands it to deepspeed.initialize (one process), and the TrainingArguments."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        deepspeed=ds,
        use_cpu=True,
        bf16=False,
        report_to=[],
        **train_args,
    )
    hf_ds = args.hf_deepspeed_config  # trainer_config_process already ran in __post_init__
    hf_ds.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=HIDDEN)), 100)
    return hf_ds.config, args


@pytest.mark.parametrize(("stage", "kwargs"), VARIANTS)
def test_trainer_fills_every_auto_and_deepspeed_accepts_the_result(stage, kwargs, tmp_path):
    import torch
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    ds = deepspeed_config(stage, **kwargs)
    assert _autos(ds), "the template leaves TrainingArguments' values to transformers"
    filled, args = _filled(
        ds, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=4, max_grad_norm=0.5
    )
    assert _autos(filled) == []
    assert _autos(ds), "the caller's dict is left as it was (transformers copies it)"
    assert filled["train_micro_batch_size_per_gpu"] == 2
    assert filled["gradient_accumulation_steps"] == 4
    assert filled["train_batch_size"] == 8  # world size 1
    assert filled["gradient_clipping"] == 0.5
    assert filled["bf16"]["enabled"] is False and filled["fp16"]["enabled"] is False
    assert args.hf_deepspeed_config.dtype() == torch.float32

    zero = DeepSpeedZeroConfig(**filled["zero_optimization"])  # extra="forbid": unknown keys raise
    assert zero.stage == stage and zero.overlap_comm and zero.contiguous_gradients
    assert zero.reduce_bucket_size == HIDDEN * HIDDEN
    if stage == 3:
        assert zero.gather_16bit_weights_on_model_save
        assert zero.prefetch_bucket_size == int(0.9 * HIDDEN * HIDDEN)
        assert zero.param_persistence_threshold == 10 * HIDDEN
    assert (zero.offload_optimizer is not None) == bool(kwargs.get("offload_optimizer"))
    assert (zero.offload_param is not None) == bool(kwargs.get("offload_params"))

    checked = DeepSpeedConfig(filled)  # the whole config, with DeepSpeed's batch arithmetic
    assert checked.zero_optimization_stage == stage
    assert checked.train_batch_size == 8 and checked.gradient_accumulation_steps == 4
    assert checked.zero_config.stage == stage


def test_optimizer_block_only_with_offload_and_filled_from_training_arguments(tmp_path):
    assert "optimizer" not in deepspeed_config(3) and "scheduler" not in deepspeed_config(3)
    filled, _ = _filled(
        deepspeed_config(2, offload_optimizer=True), tmp_path, learning_rate=3e-4, weight_decay=0.01
    )
    assert filled["optimizer"]["type"] == "AdamW"
    assert filled["optimizer"]["params"]["lr"] == 3e-4
    assert filled["optimizer"]["params"]["weight_decay"] == 0.01
    assert "scheduler" not in filled  # the Trainer's LR schedule is kept


def test_zero3_gathers_16bit_weights_on_save_and_zero2_has_no_stage3_keys():
    zero3 = deepspeed_config(3)["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero3["stage3_prefetch_bucket_size"] == "auto"
    assert zero3["stage3_param_persistence_threshold"] == "auto"
    zero2 = deepspeed_config(2)["zero_optimization"]
    assert zero2["stage"] == 2 and not [k for k in zero2 if k.startswith("stage3_")]


def test_precision_blocks():
    assert deepspeed_config(2)["bf16"] == {"enabled": "auto"}
    assert deepspeed_config(2)["fp16"] == {"enabled": "auto"}
    assert deepspeed_config(2, bf16=True)["bf16"] == {"enabled": True}
    assert deepspeed_config(2, bf16=True)["fp16"] == {"enabled": False}
    assert deepspeed_config(2, bf16=False)["bf16"] == {"enabled": False}


def test_pinned_bf16_that_disagrees_with_training_arguments_is_reported(tmp_path):
    with pytest.raises(ValueError, match="bf16"):
        _filled(deepspeed_config(2, bf16=True), tmp_path)  # TrainingArguments say bf16=False


@pytest.mark.parametrize("stage", [0, 1, 4, True, "3", None])
def test_other_stages_raise_naming_the_allowed_ones(stage):
    with pytest.raises(ValueError, match="2 or 3"):
        deepspeed_config(stage)


def test_param_offload_needs_zero3():
    with pytest.raises(ValueError, match="stage 3"):
        deepspeed_config(2, offload_params=True)


def test_trainer_deepspeed_arg_is_none_on_cpu_or_without_a_stage():
    assert trainer_deepspeed_arg(False, 3) is None
    assert trainer_deepspeed_arg(False, None) is None
    assert trainer_deepspeed_arg(True, None) is None
    assert trainer_deepspeed_arg(True, 2) == deepspeed_config(2)
    assert trainer_deepspeed_arg(True, 3, offload_optimizer=True) == deepspeed_config(
        3, offload_optimizer=True
    )
    with pytest.raises(ValueError, match="2 or 3"):
        trainer_deepspeed_arg(False, 1)  # a recipe error shows before a GPU is involved


def test_zero3_init_context_registers_a_loadable_config_only_while_open():
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled
    from transformers.integrations import deepspeed_config as registered_config

    ds = deepspeed_config(3)
    with zero3_init_context(ds) as hf_config:
        assert isinstance(hf_config, HfDeepSpeedConfig)
        assert is_deepspeed_zero3_enabled()
        # from_pretrained hands this to deepspeed.zero.Init, which builds a DeepSpeedConfig (batch checks).
        DeepSpeedConfig(registered_config())
    assert not is_deepspeed_zero3_enabled()
    assert ds == deepspeed_config(3), "the caller's dict is not changed"


def test_zero3_init_context_keeps_a_registration_made_inside_it(tmp_path):
    from transformers import TrainingArguments
    from transformers.integrations import is_deepspeed_zero3_enabled

    ds = deepspeed_config(3)
    with zero3_init_context(ds):
        args = TrainingArguments(
            output_dir=str(tmp_path), deepspeed=ds, use_cpu=True, bf16=False, report_to=[]
        )
    assert is_deepspeed_zero3_enabled(), "the TrainingArguments' own config stays registered"
    del args


@pytest.mark.parametrize("ds", [None, deepspeed_config(2)])
def test_zero3_init_context_is_a_null_context_otherwise(ds):
    from transformers.integrations import is_deepspeed_zero3_enabled

    with zero3_init_context(ds) as value:
        assert value is None
        assert not is_deepspeed_zero3_enabled()


def test_init_distributed_for_deepspeed_does_nothing_without_a_process_group():
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert init_distributed_for_deepspeed() is False


def test_init_distributed_for_deepspeed_attaches_to_the_existing_group(monkeypatch):
    """deepspeed 0.19.8 wraps an initialised group; the real call JIT-builds a CPU op, so it is recorded."""
    import deepspeed
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: calls.append(kw))
    assert init_distributed_for_deepspeed() is True
    assert calls == [{"dist_backend": "nccl", "auto_mpi_discovery": False}]

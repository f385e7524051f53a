"""What a training stage adds to its model (``TrainConfig.adapter``), as a peft config: LoRA (lora, qlora) on
chosen modules and layers, prompt tuning or prefix tuning (virtual tokens, every model weight frozen), or
nothing for full fine-tuning."""

from finetune_assets.config import TrainConfig
from finetune_assets.phases.training.layers import adapted_layers, linear_module_names

PROMPT_LEARNING = ("prompt", "prefix")  # adapters of virtual tokens (peft prompt learning), never merged


def peft_config(cfg: TrainConfig, model=None):
    """LoRA on ``cfg.lora_target_modules`` (of the layers cfg.freeze_layers leaves in ``model``) for lora and
    qlora; prompt / prefix tuning with cfg.num_virtual_tokens; None (train every weight) for full."""
    if cfg.adapter == "full":
        return None
    if cfg.adapter in PROMPT_LEARNING:
        return _prompt_learning_config(cfg, model)
    from peft import LoraConfig

    layers = adapted_layers(cfg, model.config.num_hidden_layers) if model is not None else None
    targets = cfg.lora_target_modules
    if layers is not None and isinstance(targets, str):  # peft takes chosen layers with named modules only
        targets = linear_module_names(model)
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def _prompt_learning_config(cfg: TrainConfig, model):
    from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit

    if cfg.adapter == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
    init = {}
    if cfg.prompt_init_text:
        init = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.prompt_init_text,
                "tokenizer_name_or_path": model.name_or_path}  # fmt: skip
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens, **init)

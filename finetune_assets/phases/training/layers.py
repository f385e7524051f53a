"""Per-layer training settings: freezing the first K decoder layers, and layer-wise learning-rate decay.

``freeze_layers`` K: with LoRA no adapter goes on the first K layers (peft's ``layers_to_transform``); with
full fine-tuning their weights and the token embeddings keep requires_grad False. ``layerwise_lr_decay`` d
< 1: the trainable weights of decoder layer i (of L) learn at lr * d^(L-1-i), so the top layer moves at the
configured rate and lower layers, holding more general features, move less; weights outside the decoder
layers (head, final norm) learn at lr. It builds the AdamW parameter groups the trainer then schedules.
"""

import re

from finetune_assets.config import TrainConfig

_LAYER = re.compile(r"\.layers\.(\d+)\.")  # model.layers.<i>. in Llama-family names (peft prefixes them)


def layer_of(name: str) -> int | None:
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def adapted_layers(cfg: TrainConfig, num_layers: int) -> list[int] | None:
    """The decoder layers LoRA goes on: all (None) unless cfg.freeze_layers keeps the first K bare."""
    if not cfg.freeze_layers:
        return None
    if cfg.freeze_layers >= num_layers:
        raise ValueError(
            f"freeze_layers ({cfg.freeze_layers}) must be below the model's {num_layers} layers: nothing "
            "would be trained"
        )
    return list(range(cfg.freeze_layers, num_layers))


def linear_module_names(model) -> list[str]:
    """What peft's "all-linear" means, as names: every linear module's last name part but the output head."""
    import torch

    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
         if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
    )  # fmt: skip


def freeze_full_layers(model, cfg: TrainConfig) -> int:
    """Full fine-tuning: requires_grad off for the embeddings and the first cfg.freeze_layers layers;
    returns how many tensors were frozen."""
    if not cfg.freeze_layers:
        return 0
    adapted_layers(cfg, model.config.num_hidden_layers)  # the same bound as with LoRA
    frozen = 0
    for name, param in model.named_parameters():
        layer = layer_of(name)
        if (layer is not None and layer < cfg.freeze_layers) or "embed_tokens" in name:
            param.requires_grad_(False)
            frozen += 1
    return frozen


def layerwise_optimizer(model, cfg: TrainConfig):
    """AdamW over the trainable weights, one group per decoder layer at lr * decay^(L-1-i); None when
    cfg.layerwise_lr_decay is 1 (the trainer builds its own optimizer)."""
    if cfg.layerwise_lr_decay == 1.0:
        return None
    import torch

    num_layers = model.config.num_hidden_layers
    groups: dict[int | None, list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(layer_of(name), []).append(param)
    param_groups = [
        {"params": params, "lr": cfg.learning_rate * (cfg.layerwise_lr_decay ** (num_layers - 1 - layer)
                                                      if layer is not None else 1.0),
         "weight_decay": cfg.weight_decay, "layer": layer}
        for layer, params in sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
    ]  # fmt: skip
    return torch.optim.AdamW(param_groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

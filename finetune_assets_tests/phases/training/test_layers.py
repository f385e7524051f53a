"""Per-layer settings act on the tiny model (2 decoder layers): frozen layers do not change, and layer-wise
decay gives each layer's weights their own learning rate."""

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from finetune_assets.config import TrainConfig
from finetune_assets.phases.training.layers import adapted_layers, layer_of
from finetune_assets.phases.training.train import sft

BASE = {"max_steps": 4, "learning_rate": 1e-2, "per_device_batch_size": 4, "lora_dropout": 0.0, "max_length": 128,
        "checkpoint_steps": 0, "precision": "fp32"}  # fmt: skip


def _weights(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _changed_by_layer(before: dict, after: dict) -> dict:
    changed: dict = {}
    for name, tensor in before.items():
        key = layer_of("." + name) if layer_of("." + name) is not None else name
        changed[key] = changed.get(key, False) or not (after[name] == tensor).all().item()
    return changed


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_frozen_first_layer_does_not_change(tmp_path, tiny_model_dir, tiny_chat_rows, adapter):
    cfg = TrainConfig(**BASE, adapter=adapter, freeze_layers=1)
    sft(tiny_model_dir, tiny_chat_rows, [], cfg, tmp_path / "out")
    changed = _changed_by_layer(_weights(tiny_model_dir), _weights(tmp_path / "out" / "merged"))
    assert changed[0] is False, "layer 0 is frozen"
    assert changed[1] is True, "layer 1 trained"
    if adapter == "full":
        assert changed["model.embed_tokens.weight"] is False
    else:
        adapter_weights = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
        assert {layer_of("." + n) for n in adapter_weights} == {1}, "no adapter on the frozen layer"


class Groups(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.lrs = {g["layer"]: g.get("initial_lr", g["lr"]) for g in optimizer.param_groups}


def test_layerwise_lr_decay_gives_lower_layers_smaller_rates(tmp_path, tiny_model_dir, tiny_chat_rows):
    groups = Groups()
    cfg = TrainConfig(**BASE, layerwise_lr_decay=0.5)
    sft(tiny_model_dir, tiny_chat_rows, [], cfg, tmp_path / "out", callbacks=[groups])
    assert groups.lrs == {1: pytest.approx(1e-2), 0: pytest.approx(5e-3)}


def test_freezing_every_layer_is_refused():
    with pytest.raises(ValueError, match="below the model's 2 layers"):
        adapted_layers(TrainConfig(freeze_layers=2), 2)
    assert adapted_layers(TrainConfig(freeze_layers=1), 2) == [1] and adapted_layers(TrainConfig(), 2) is None

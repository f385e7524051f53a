"""phases.training.train: training methods on the tiny random model: loss falls, LoRA weights change."""

import json

import pytest
import torch

from finetune_assets.config import CptConfig, TrainConfig
from finetune_assets.phases.training.artifacts import SUMMARY_FILE
from finetune_assets.phases.training.train import cpt, dpo, sft

# lr high and dropout off: a random 0.1M-parameter model must visibly learn in ~20 steps on one thread
FAST = TrainConfig(
    max_steps=20, learning_rate=1e-2, per_device_batch_size=4, lora_dropout=0.0, max_length=128
)


CONTRACT_KEYS = {
    "method", "steps", "losses", "first_loss", "last_loss", "trainable_params", "changed_params",
    "param_delta_l2", "train_runtime_s", "tokens_per_s", "num_workers",
}  # fmt: skip


def _mean(values):
    return sum(values) / len(values)


def check_model_folder(out_dir, summary, method, steps, adapter=True):
    """The contract of docs/ARCHITECTURE.md: merged/ loads, adapter/ exists (not after full fine-tuning),
    summary complete."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert json.loads((out_dir / SUMMARY_FILE).read_text()) == json.loads(json.dumps(summary))
    assert CONTRACT_KEYS <= summary.keys()
    assert summary["method"] == method and summary["steps"] == steps and len(summary["losses"]) == steps
    assert summary["changed_params"] > 0 and summary["param_delta_l2"] > 0
    per_step = summary["step_metrics"]  # what goes to MLflow with its step numbers
    expected = {"loss", "learning_rate", "grad_norm"} | ({"tokens_per_s"} if method != "orpo" else set())
    assert expected <= set(per_step)
    assert all([s for s, _ in per_step[k]] == list(range(1, steps + 1)) for k in expected)
    assert 0 < summary["trainable_params"] and summary["tokens_per_s"] > 0 and summary["num_workers"] == 1
    assert (out_dir / "adapter" / "adapter_config.json").is_file() == adapter
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file() == adapter
    merged = AutoModelForCausalLM.from_pretrained(out_dir / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "merged")
    assert "{% generation %}" in tokenizer.chat_template
    assert not any("lora" in name for name, _ in merged.named_parameters())
    return merged


def _logits(model_or_dir, text="<|im_start|>user\nWhat is a list?<|im_end|>\n"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = (
        AutoModelForCausalLM.from_pretrained(model_or_dir)
        if not hasattr(model_or_dir, "config")
        else model_or_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir, tiny_chat_rows):
    out = tmp_path_factory.mktemp("sft") / "inst"
    summary = sft(tiny_model_dir, tiny_chat_rows, tiny_chat_rows[:2], FAST, out)
    return out, summary


def test_sft_learns_and_writes_the_model_folder(sft_run, tiny_model_dir):
    out, summary = sft_run
    losses = summary["losses"]
    assert _mean(losses[-3:]) < _mean(losses[:3]) - 0.1, losses
    assert summary["eval_loss"] < summary["first_loss"]
    merged = check_model_folder(out, summary, "sft", FAST.max_steps)
    assert not torch.allclose(_logits(merged), _logits(tiny_model_dir))  # merged weights carry the update


def _answer_nll(folder, tokenizer_dir, conv) -> float:
    """Mean NLL of the last (assistant) turn of ``conv`` under the model in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conv, tokenize=False)
    ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.inference_mode():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    target = ids[0, 1:]
    return -logp[start - 1 :].gather(1, target[start - 1 :, None]).mean().item()


def test_sft_merged_model_answers_better(sft_run, tiny_model_dir, tiny_chat_rows):
    """Assistant-only loss: trained answer tokens got likelier under the merged model."""
    out, _ = sft_run
    conv = tiny_chat_rows[0]["messages"]
    after, before = (
        _answer_nll(out / "merged", tiny_model_dir, conv),
        _answer_nll(tiny_model_dir, tiny_model_dir, conv),
    )
    assert after < before - 0.1


def test_dpo_prefers_chosen(tmp_path, tiny_model_dir, tiny_chat_rows):
    rows = [
        {
            "id": r["id"],
            "prompt": r["messages"][:-1],
            "chosen": r["messages"][-1]["content"],
            "rejected": "I do not know, sorry.",
        }
        for r in tiny_chat_rows
    ]
    cfg = FAST.model_copy(update={"max_steps": 12, "learning_rate": 5e-3})
    summary = dpo(tiny_model_dir, rows, cfg, tmp_path / "dpo")
    losses = summary["losses"]
    assert _mean(losses[-3:]) < _mean(losses[:3]), losses
    assert len(summary["rewards_accuracies"]) == cfg.max_steps and summary["last_reward_accuracy"] > 0.5
    assert summary["last_reward_margin"] > 0
    assert len(summary["step_metrics"]["rewards/margins"]) == cfg.max_steps
    check_model_folder(tmp_path / "dpo", summary, "dpo", cfg.max_steps)


def test_cpt_on_corpus(tmp_path, tiny_model_dir, tiny_corpus):
    train_cfg = FAST.model_copy(update={"max_length": 64, "per_device_batch_size": 2})
    cpt_cfg = CptConfig(enabled=True, max_steps=8, learning_rate=1e-2)
    summary = cpt(tiny_model_dir, tiny_corpus * 3, cpt_cfg, tmp_path / "cpt", train_cfg=train_cfg)
    assert summary["num_blocks"] > 4
    assert _mean(summary["losses"][-3:]) < _mean(summary["losses"][:3]), summary["losses"]
    check_model_folder(tmp_path / "cpt", summary, "cpt", 8)


def _pairs(tiny_chat_rows):
    return [
        {
            "id": r["id"],
            "prompt": r["messages"][:-1],
            "chosen": r["messages"][-1]["content"],
            "rejected": "I do not know, sorry.",
        }
        for r in tiny_chat_rows
    ]


def test_full_fine_tuning_trains_every_weight(tmp_path, tiny_model_dir, tiny_chat_rows):
    from transformers import AutoModelForCausalLM

    cfg = FAST.model_copy(update={"adapter": "full", "learning_rate": 1e-3, "max_steps": 12})
    summary = sft(tiny_model_dir, tiny_chat_rows, [], cfg, tmp_path / "full")
    assert _mean(summary["losses"][-3:]) < _mean(summary["losses"][:3]), summary["losses"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert summary["trainable_params"] == sum(p.numel() for p in base.parameters())
    check_model_folder(tmp_path / "full", summary, "sft", 12, adapter=False)


def test_kto_on_unpaired_feedback(tmp_path, tiny_model_dir, tiny_chat_rows):
    from finetune_assets.phases.training.examples import kto_rows
    from finetune_assets.phases.training.train import kto

    thumbs = [
        {"prompt": [{"role": "user", "content": "Is eval() safe?"}], "completion": "No.", "label": True}
    ]
    rows = kto_rows(_pairs(tiny_chat_rows), thumbs)
    assert len(rows) == 2 * len(tiny_chat_rows) + 1 and {r["label"] for r in rows} == {True, False}
    cfg = FAST.model_copy(update={"max_steps": 10, "learning_rate": 5e-3})
    summary = kto(tiny_model_dir, rows, cfg, tmp_path / "kto")
    assert _mean(summary["losses"][-3:]) < _mean(summary["losses"][:3]), summary["losses"]
    check_model_folder(tmp_path / "kto", summary, "kto", 10)
    with pytest.raises(ValueError, match="both desirable and undesirable"):
        kto(tiny_model_dir, [r for r in rows if r["label"]], cfg, tmp_path / "kto-bad")


def test_orpo_needs_no_reference_and_prefers_chosen(tmp_path, tiny_model_dir, tiny_chat_rows):
    from finetune_assets.phases.training.train import orpo

    cfg = FAST.model_copy(update={"max_steps": 10, "learning_rate": 5e-3})
    summary = orpo(tiny_model_dir, _pairs(tiny_chat_rows), cfg, tmp_path / "orpo")
    assert _mean(summary["losses"][-3:]) < _mean(summary["losses"][:3]), summary["losses"]
    assert summary["last_reward_margin"] is not None
    check_model_folder(tmp_path / "orpo", summary, "orpo", 10)


def test_qlora_on_cpu_is_a_clear_error(tmp_path, tiny_model_dir, tiny_chat_rows, monkeypatch):
    from finetune_assets.config import ConfigError
    from finetune_assets.phases.training import train
    from finetune_assets.phases.training.train import QLoRAUnavailable
    from finetune_assets.recipe import validate_profile

    monkeypatch.setattr(train, "_on_cuda", lambda: False)  # a CPU machine, even where a GPU is present
    with pytest.raises(QLoRAUnavailable, match="needs a CUDA GPU.*adapter: lora"):
        sft(tiny_model_dir, tiny_chat_rows, [], FAST.model_copy(update={"adapter": "qlora"}), tmp_path / "q")
    assert not (tmp_path / "q").exists()
    with pytest.raises(ConfigError, match="sft.adapter is 'qlora'.*scaling.use_gpu"):
        validate_profile({"name": "x", "sft": {"adapter": "qlora"}})


def test_deepspeed_config_reaches_the_trainer_arguments_it_is_passed_to(tmp_path):
    from finetune_assets.launch.deepspeed import deepspeed_config
    from finetune_assets.phases.training import train

    ds = deepspeed_config(2)
    assert train.common_args(FAST, str(tmp_path))["deepspeed"] is None
    assert train.common_args(FAST, str(tmp_path), ds)["deepspeed"] is ds and not train.is_zero3(ds)
    assert train.is_zero3(deepspeed_config(3)) and not train.is_zero3(None)


def test_cpt_defaults_to_one_epoch_over_the_packed_blocks(tmp_path, tiny_model_dir, tiny_corpus):
    train_cfg = FAST.model_copy(update={"max_length": 64, "per_device_batch_size": 4})
    summary = cpt(
        tiny_model_dir,
        tiny_corpus,
        CptConfig(enabled=True, learning_rate=1e-2),
        tmp_path / "c",
        train_cfg=train_cfg,
    )
    assert summary["steps"] == -(-summary["num_blocks"] // 4)  # ceil(blocks / batch): each block once
    assert (tmp_path / "c" / "merged" / "config.json").is_file()


def test_packing_probe_and_packed_sft(tmp_path, tiny_model_dir, tiny_chat_rows):
    from transformers import AutoModelForCausalLM

    from finetune_assets.phases.training.train import packing_supported

    assert packing_supported(AutoModelForCausalLM.from_pretrained(tiny_model_dir))

    class Leaky(torch.nn.Module):  # attends across the boundary: position ids are ignored
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.model(input_ids=input_ids, **kwargs)

    assert not packing_supported(Leaky(AutoModelForCausalLM.from_pretrained(tiny_model_dir)))
    cfg = FAST.model_copy(update={"packing": True, "max_length": 256, "max_steps": 10})  # forced on
    summary = sft(tiny_model_dir, tiny_chat_rows * 4, [], cfg, tmp_path / "packed")
    assert summary["packing"] is True
    assert _mean(summary["losses"][-3:]) < _mean(summary["losses"][:3]), summary["losses"]


def test_bf16_autocast_follows_the_fp32_loss_curve(tmp_path, tiny_model_dir, tiny_chat_rows):
    """Mixed precision changes the arithmetic, not the training: on the same rows and seed the bf16-autocast
    loss curve stays within noise of fp32's, and both fall. Trainable weights stay fp32 either way. "bf16" is
    asked for explicitly, so this runs on any CPU (emulated where bf16 is not native, only slower)."""
    cfg = FAST.model_copy(update={"max_steps": 15, "packing": False})
    runs = {
        p: sft(tiny_model_dir, tiny_chat_rows, [], cfg.model_copy(update={"precision": p}), tmp_path / p)
        for p in ("fp32", "bf16")
    }
    assert runs["fp32"]["precision"] == "fp32" and runs["bf16"]["precision"] == "bf16"
    fp32, bf16 = runs["fp32"]["losses"], runs["bf16"]["losses"]
    assert _mean(bf16[-3:]) < _mean(bf16[:3]) - 0.1, bf16
    # bf16 keeps 8 mantissa bits: per-step losses differ by rounding, a few percent at most on this model
    relative = [abs(a - b) / a for a, b in zip(fp32, bf16, strict=True)]
    assert max(relative) < 0.05, list(zip(fp32, bf16, strict=True))
    adapter = tmp_path / "bf16" / "adapter" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(adapter).values()} == {torch.float32}
    # the frozen base trained in bf16, but the merge went into the fp32 weights: no update rounded away
    merged = load_file(tmp_path / "bf16" / "merged" / "model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.float32}
    config = json.loads((tmp_path / "bf16" / "merged" / "config.json").read_text())
    assert "merge_base_dir" not in config


def test_packing_auto_needs_variable_length_attention(tiny_model_dir, monkeypatch):
    """auto packs only where attention has variable-length kernels: on CPU sdpa a pack is one long row under
    a dense mask (slower than length-grouped batches); an explicit True still packs where the probe passes."""
    from transformers import AutoModelForCausalLM

    from finetune_assets.phases.training.train import use_packing

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config._attn_implementation == "sdpa"
    assert use_packing("auto", model) is False
    assert use_packing(True, model) is True and use_packing(False, model) is False
    from types import SimpleNamespace

    from finetune_assets.phases.training import train

    monkeypatch.setattr(train, "packing_supported", lambda model: True)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2", model_type="x"))
    assert use_packing("auto", flash) is True  # what a CUDA box with flash-attn reports


def test_dpo_reference_log_probs_are_computed_once(tmp_path, tiny_model_dir, tiny_chat_rows, monkeypatch):
    """precompute_ref_log_probs: the adapter-disabled reference scores every pair once, in one pass before
    training (one call per batch of the data), however many steps and epochs follow; off, trl scores it
    inside every step instead and this pass never runs. Training still prefers chosen."""
    from trl import DPOTrainer

    calls = []
    original = DPOTrainer.compute_ref_log_probs

    def counting(self, model, inputs):
        calls.append(len(inputs["input_ids"]))
        return original(self, model, inputs)

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", counting)
    rows = [
        {"prompt": r["messages"][:-1], "chosen": r["messages"][-1]["content"], "rejected": "No idea."}
        for r in tiny_chat_rows
    ]
    cfg = FAST.model_copy(update={"max_steps": 12, "learning_rate": 5e-3})
    assert cfg.max_steps * cfg.per_device_batch_size > 2 * len(rows)  # several epochs: per step would repeat
    summary = dpo(tiny_model_dir, rows, cfg, tmp_path / "dpo")
    assert summary["last_reward_margin"] > 0
    assert sum(calls) == 2 * len(rows)  # each pair's chosen and rejected rows, once
    calls.clear()
    dpo(tiny_model_dir, rows, cfg.model_copy(update={"precompute_ref_log_probs": False}), tmp_path / "d2")
    assert calls == []


def test_dpo_sft_loss_weight_keeps_the_chosen_answers_likely(tmp_path, tiny_model_dir, tiny_chat_rows):
    """sft_loss_weight (RPO): the NLL of the chosen answer joins the DPO loss, so after the same steps on the
    same pairs the chosen answers are likelier than after plain DPO, which only widens the margin."""
    rows = [
        {"prompt": r["messages"][:-1], "chosen": r["messages"][-1]["content"], "rejected": "No idea."}
        for r in tiny_chat_rows
    ]
    cfg = FAST.model_copy(update={"max_steps": 12, "learning_rate": 5e-3})
    plain = dpo(tiny_model_dir, rows, cfg, tmp_path / "dpo")
    rpo = dpo(tiny_model_dir, rows, cfg.model_copy(update={"sft_loss_weight": 1.0}), tmp_path / "rpo")
    assert rpo["last_reward_margin"] > 0 and plain["last_reward_margin"] > 0

    def mean_nll(folder):
        return _mean([_answer_nll(folder, tiny_model_dir, r["messages"]) for r in tiny_chat_rows])

    assert mean_nll(tmp_path / "rpo" / "merged") < mean_nll(tmp_path / "dpo" / "merged") - 0.05


def test_label_positions_only_gives_the_fused_heads_loss_and_gradients_of_every_position(
    tiny_model_dir, monkeypatch
):
    """score_label_positions_only: trl's fused LM head then projects only labelled positions on CPU; the
    loss, the token metrics and the gradients must be those of projecting every position."""
    from transformers import AutoModelForCausalLM
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    from finetune_assets.phases.training.train import score_label_positions_only

    shipped = chunked_logprob._use_triton  # where trl defines it (an earlier training test patched utils')
    cpu = torch.device("cpu")
    assert not shipped(cpu)  # trl as shipped scores every position on CPU
    monkeypatch.setattr(trl_utils, "_use_triton", shipped)  # restored after the test

    def fused_run():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        ids = torch.randint(3, model.config.vocab_size, (2, 12))
        labels = ids.clone()
        labels[0, :7] = -100  # a prompt
        labels[1, 9:] = -100  # padding
        out = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    full, full_grads = fused_run()
    assert score_label_positions_only() and trl_utils._use_triton(cpu)
    patched = trl_utils._use_triton
    assert score_label_positions_only() and trl_utils._use_triton is patched  # applied once, not nested
    compact, compact_grads = fused_run()
    torch.testing.assert_close(compact.loss, full.loss)
    torch.testing.assert_close(compact.entropy, full.entropy)
    assert torch.equal(compact.is_top1, full.is_top1) and torch.equal(compact.label_mask, full.label_mask)
    assert compact_grads.keys() == full_grads.keys() and full_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(compact_grads[name], grad, msg=name)

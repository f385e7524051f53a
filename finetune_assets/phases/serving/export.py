"""Export a merged model for llama.cpp and Ollama: a GGUF file, written with the ``gguf`` package's writer the
way llama.cpp's converter (convert_hf_to_gguf.py: TextModel + LlamaModel) writes a Llama checkpoint, and an
Ollama Modelfile beside it.

What goes in:
- the ``llama.*`` hyperparameters llama.cpp's converter writes, with rope_theta read from transformers 5's
  ``rope_parameters`` (an older converter misses it there and llama.cpp would fall back to 10000);
- the tensors under llama.cpp's names (gguf.get_tensor_name_map), q_proj / k_proj permuted into GGML's rotary
  layout (transformers' GGUF loader undoes it), norms and 1-D tensors in F32, the rest in ``outtype``
  (f32, f16, bf16, q8_0; a row length not divisible by 32 falls back to F16 as in the converter); a tied
  lm_head is left out (both readers then reuse token_embd);
- the BPE vocabulary (tokens, types, merges, special ids, add_bos) and the chat template the variant was
  trained with, without transformers' ``{% generation %}`` markers (they only mark the assistant mask and
  render no text; llama.cpp's Jinja engine does not know them).

``check_template`` and ``check_logits`` load the GGUF back with transformers and compare rendered
conversations and logits with the source folder: the export's own proof, recorded in export.json.
"""

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path

from finetune_assets import io
from finetune_assets.phases.inference.generation import ADAPTER_CONFIG

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
GENERATION_TAGS = ("{% generation %}", "{% endgeneration %}", "{%- generation %}", "{%- endgeneration %}")


def gguf_template(template: str) -> str:
    """The chat template as a GGUF carries it: transformers' text-neutral generation markers removed."""
    for tag in GENERATION_TAGS:
        template = template.replace(tag, "")
    return template


def _permute(w, n_head: int, n_head_kv: int | None):
    """llama.cpp's LlamaModel.permute: HF's rotate-half q/k rows into GGML's interleaved rotary layout."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _looks_special(token: str) -> bool:  # llama.cpp's TextModel.does_token_look_special
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _pre_tokenizer(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name: SmolLM's (digits split one by one, then GPT-2's regex) or GPT-2's."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    return "smollm" if '"Digits"' in json.dumps(spec) else "gpt-2"


def _vocab(tokenizer, vocab_size: int):
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added, decoder = tokenizer.get_added_vocab(), tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or _looks_special(token):
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def write_gguf(model_dir: Path, out_path: Path, outtype: str = "q8_0", name: str | None = None) -> Path:
    """``model_dir`` (a merged Llama-architecture HF folder with safetensors) as GGUF at ``out_path``,
    written beside it and renamed into place."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    model_dir, out_path = Path(model_dir), Path(out_path)
    if (model_dir / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{model_dir} is an adapter (a prompt- or prefix-tuned stage): its virtual tokens "
                         "have no place in a GGUF file; export a LoRA or fully fine-tuned variant")  # fmt: skip
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json): export a "
                                "variant's merged/ folder or a registered models:/ URI")  # fmt: skip
    cfg = AutoConfig.from_pretrained(model_dir)
    if cfg.model_type != "llama":
        raise ValueError(
            f"{model_dir}: GGUF export covers the Llama architecture, this is {cfg.model_type!r}"
        )
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(
            f"{model_dir}: rope scaling {rope.get('rope_type')!r} is not exported (needs rope_freqs)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    weight_type = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                   "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]  # fmt: skip
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]  # fmt: skip
    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads or n_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or model_dir.name)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        if rope_theta is not None:
            w.add_rope_freq_base(float(rope_theta))
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_file_type(file_type)
        w.add_vocab_size(cfg.vocab_size)
        w.add_rope_dimension_count(head_dim)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = _vocab(tokenizer, cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_pre_tokenizer(tokenizer))
        w.add_token_list(tokens)
        w.add_token_types(types)
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
        special.chat_template = gguf_template(tokenizer.chat_template or special.chat_template or "")
        probe = tokenizer("a")["input_ids"]
        special.add_special_token["bos"] = bool(
            tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
        )
        special.add_special_token.setdefault(
            "eos", bool(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
        )
        special.add_to_gguf(w, quiet=True)

        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
        state = {}
        for part in sorted(glob.glob(str(model_dir / "model*.safetensors"))):
            state.update(load_file(part))
        if not state:
            raise FileNotFoundError(f"{model_dir} has no model*.safetensors (export a merged folder)")
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        if not tied and "lm_head.weight" not in state:
            raise ValueError(f"{model_dir}: untied embeddings but no lm_head.weight")
        for hf_name, tensor in state.items():
            if hf_name.endswith(".rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and tied):
                continue
            data = tensor.to(torch.float32).numpy()
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head, n_head)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, n_head, n_kv)
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ValueError(f"{model_dir}: no GGUF name for tensor {hf_name!r}")
            qtype = (
                gguf.GGMLQuantizationType.F32
                if data.ndim <= 1 or gguf_name.endswith("_norm.weight")
                else weight_type
            )
            try:
                packed = gguf.quants.quantize(data, qtype)
            except gguf.QuantError:  # a row length Q8_0 cannot block (not a multiple of 32)
                qtype = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(data, qtype)
            w.add_tensor(gguf_name, packed, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out_path


def modelfile(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile for the GGUF: ChatML in Ollama's Go template syntax, and the end-of-turn stop."""
    template = tokenizer.chat_template or ""
    if "<|im_start|>" not in template:
        return f"FROM ./{gguf_name}\n"  # Ollama falls back to the GGUF's own template
    go_template = (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    )
    return (
        f"FROM ./{gguf_name}\n"
        f'TEMPLATE """{go_template}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0\n"
    )


def sample_conversations() -> list[dict]:
    """Conversations the parity check renders: plain turns, a system prompt, and the T&R protocol (the tools
    prompt, a tool call, the tool's result, the answer), with and without the generation prompt."""
    from finetune_assets.phases.inference import tools

    system = tools.system_prompt()
    call = tools.format_tool_call("python_eval", {"expression": "sorted([3, 1, 2])"})
    return [
        {"messages": [{"role": "user", "content": "What does len() return?"}], "add_generation_prompt": True},
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Is a tuple mutable?"},
                {"role": "assistant", "content": "No: a tuple cannot change."},
            ],
            "add_generation_prompt": False,
        },  # fmt: skip
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "Sort 3, 1, 2 for me."},
                {"role": "assistant", "content": call},
                tools.tool_message({"ok": True, "result": "[1, 2, 3]"}),
                {"role": "assistant", "content": "The sorted list is [1, 2, 3]."},
            ],
            "add_generation_prompt": False,
        },  # fmt: skip
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "Sort 3, 1, 2 for me."},
            ],
            "add_generation_prompt": True,
        },  # fmt: skip
    ]


def _gguf_loaded(gguf_path: Path, model: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not model:
        return tokenizer, None
    import torch

    return tokenizer, AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


def check_template(model_dir: Path, gguf_path: Path, conversations: list[dict] | None = None) -> dict:
    """Render every conversation through the training tokenizer and through the GGUF's; compare the texts and
    the token ids. {n, identical_text, identical_ids, mismatches}."""
    from transformers import AutoTokenizer

    trained = AutoTokenizer.from_pretrained(model_dir)
    exported, _ = _gguf_loaded(Path(gguf_path), model=False)
    conversations = conversations or sample_conversations()
    mismatches, same_ids = [], 0
    for i, conv in enumerate(conversations):
        args = {"tokenize": False, "add_generation_prompt": conv["add_generation_prompt"]}
        a = trained.apply_chat_template(conv["messages"], **args)
        b = exported.apply_chat_template(conv["messages"], **args)
        if a != b:
            mismatches.append({"conversation": i, "trained": a, "gguf": b})
        same_ids += (
            trained(a, add_special_tokens=False)["input_ids"]
            == exported(a, add_special_tokens=False)["input_ids"]
        )
    return {"n": len(conversations), "identical_text": not mismatches, "identical_ids": same_ids == len(conversations),
            "mismatches": mismatches}  # fmt: skip


def check_logits(model_dir: Path, gguf_path: Path, texts: list[str] | None = None) -> dict:
    """Logits of the source folder and of the GGUF loaded back with transformers, on the same token ids.
    {max_abs_diff, mean_abs_diff, max_abs_logit, relative (max diff / max logit), argmax_agreement, tokens}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    _, exported = _gguf_loaded(Path(gguf_path), model=True)
    texts = texts or [c for conv in sample_conversations()[:3] for c in [tokenizer.apply_chat_template(
        conv["messages"], tokenize=False, add_generation_prompt=conv["add_generation_prompt"])]]  # fmt: skip
    worst, scale, agree, total, abs_sum = 0.0, 0.0, 0, 0, 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            a, b = source(ids).logits[0], exported(ids).logits[0]
            worst = max(worst, float((a - b).abs().max()))
            abs_sum += float((a - b).abs().mean()) * ids.shape[1]
            scale = max(scale, float(a.abs().max()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += ids.shape[1]
    relative = worst / scale if scale else 0.0
    return {"max_abs_diff": worst, "mean_abs_diff": abs_sum / total, "max_abs_logit": scale, "relative": relative,
            "argmax_agreement": agree / total, "tokens": total}  # fmt: skip


def export(
    model_dir: Path, out_dir: Path, outtype: str = "q8_0", name: str | None = None, verify: bool = True
) -> dict:
    """The export folder: ``model-<outtype>.gguf``, ``Modelfile``, and ``export.json`` (source, sha256, and with
    ``verify`` the template and logit checks). The merged safetensors stay where they are (``source``)."""
    from transformers import AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    gguf_name = f"model-{outtype}.gguf"
    with io.atomic_dir(out_dir) as tmp:
        path = write_gguf(model_dir, tmp / gguf_name, outtype, name)
        io.write_text(modelfile(gguf_name, AutoTokenizer.from_pretrained(model_dir)), tmp / "Modelfile")
        info = {"source": str(model_dir), "gguf": gguf_name, "outtype": outtype, "bytes": path.stat().st_size,
                "sha256": _sha256(path)}  # fmt: skip
        if verify:
            info["template"] = check_template(model_dir, path)
            info["logits"] = check_logits(model_dir, path)
        io.write_json(info, tmp / "export.json")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

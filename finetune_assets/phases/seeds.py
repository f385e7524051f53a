"""Seed instructions and human feedback: import files people bring, quarantine what cannot be used.

Two importers, both pure (no dagster, no model code), both reading JSONL (one record per line) or a ``.json``
file holding a list of records:

- ``load_seed_file`` turns Alpaca, Dolly, ShareGPT, OpenAI-messages and prompt/completion records into
  instruction rows (the contract of phases/instructions.py: {id, messages, source, topic, generator, split}).
- ``load_feedback_file`` turns pairwise {prompt, chosen, rejected} records into preference rows (the contract
  of phases/preferences.py) and binary {prompt, completion, label} records (thumbs up/down) into KTO rows
  {id, prompt (messages), completion (str), label, source}; train.to_kto_example turns a row into the
  conversational form trl's KTOTrainer takes.

A record that cannot be used never vanishes: it goes to the quarantine list as
{path, line, reason, raw} (``line`` is 1-based; for a ``.json`` list it is the item's index + 1; ``reason``
names the field to fix) and is counted in the stats. ``write_quarantine`` writes that list as JSONL.
"""

import hashlib
import json
from pathlib import Path

from finetune_assets.io import write_jsonl
from finetune_assets.phases.dedup import normalize

SEED_FORMATS = ("alpaca", "dolly", "sharegpt", "openai", "prompt_completion")
RAW_LIMIT = 2000
SEED_TOPIC_BUCKETS = 10

_SEED_KEY = "instructions.seed_files"
_FEEDBACK_KEY = "preferences.feedback_files"
_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
_LABEL_TRUE = {"up", "thumbs_up", "thumbs-up", "thumbsup", "good", "true", "yes", "1", "positive"}
_LABEL_FALSE = {
    "down",
    "thumbs_down",
    "thumbs-down",
    "thumbsdown",
    "bad",
    "false",
    "no",
    "0",
    "-1",
    "negative",
}
_FORMAT_HELP = (
    "expected one of: instruction+output (alpaca), instruction+response (dolly), conversations (sharegpt), "
    "messages (openai), prompt+completion (prompt_completion)"
)


class RecordError(ValueError):
    """A record that cannot be imported; the message says which field to fix."""


# ---------------------------------------------------------------------------------------------- reading


def _read_items(path: Path, config_key: str) -> list[tuple[int, str, object]]:
    """(line number, raw text, parsed value or the JSON error) for every non-blank record of the file.

    Raises FileNotFoundError / ValueError naming the path and the config key when the file itself is unusable.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file; fix the path in {config_key} (relative paths are "
            "under $FINETUNE_ASSETS_HOME/inputs)"
        )
    if not path.is_file():
        raise ValueError(f"{path}: is a folder, not a file; list JSONL or .json files in {config_key}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8 or remove it from {config_key}"
        ) from exc
    except OSError as exc:
        raise ValueError(
            f"{path}: cannot be read ({exc}); fix its permissions or remove it from {config_key}"
        ) from exc
    text = text.removeprefix("\ufeff")

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: invalid JSON ({exc}); a .json file must hold one list of records. For one record "
                f"per line name the file .jsonl, or fix the file listed in {config_key}"
            ) from exc
        if not isinstance(data, list):
            raise ValueError(
                f"{path}: a .json file must hold a list of records, found {type(data).__name__}; wrap the "
                f"records in [...] or use JSONL, then list it in {config_key}"
            )
        return [(i + 1, json.dumps(item, ensure_ascii=False), item) for i, item in enumerate(data)]

    items: list[tuple[int, str, object]] = []
    # Split on newlines only: str.splitlines would also split on U+2028/U+0085, which JSON allows unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            value: object = json.loads(line)
        except json.JSONDecodeError as exc:
            value = exc
        items.append((number, line, value))
    return items


def _quarantine(path: Path, line: int, reason: str, raw: str) -> dict:
    return {"path": str(path), "line": line, "reason": reason, "raw": raw[:RAW_LIMIT]}


def _as_record(value: object) -> dict:
    if isinstance(value, json.JSONDecodeError):
        raise RecordError(
            f"invalid JSON ({value.msg} at column {value.colno}); each line must be one JSON object"
        )
    if not isinstance(value, dict):
        raise RecordError(f"record is a {type(value).__name__}, not a JSON object")
    return value


def _id(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode("utf-8")).hexdigest()[:16]


def _canonical(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


# ------------------------------------------------------------------------------------------- fields


def _text(rec: dict, field: str, required: bool = True) -> str:
    """A string field, stripped; a required one must be present and non-empty."""
    value = rec.get(field)
    if value is None:
        if required:
            raise RecordError(f"missing field '{field}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise RecordError(f"field '{field}' is empty")
    return value


def _content(value: object, where: str) -> str:
    """Turn content into text: a string, or OpenAI content parts [{type: text, text}]."""
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise RecordError(f"{where}.content: only text parts {{type: text, text}} are supported")
            texts.append(part["text"])
        value = "".join(texts)
    if value is None:
        raise RecordError(f"{where}: missing 'content'")
    if not isinstance(value, str):
        raise RecordError(f"{where}.content must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"{where}.content is empty")
    return value.strip()


def _turn(item: object, where: str) -> dict:
    """One chat turn {role, content} from {role, content} or ShareGPT {from, value}; roles normalized."""
    if not isinstance(item, dict):
        raise RecordError(f"{where} must be an object with role and content, got {type(item).__name__}")
    if "role" in item or "content" in item:
        role, content = item.get("role"), item.get("content")
    elif "from" in item or "value" in item:
        role, content = item.get("from"), item.get("value")
    else:
        raise RecordError(f"{where} needs 'role' and 'content' (or ShareGPT 'from' and 'value')")
    if not isinstance(role, str) or role.strip().lower() not in _ROLE_ALIASES:
        raise RecordError(
            f"{where}: unknown role {role!r}; use system, user/human or assistant/gpt (tool turns are not "
            "supported in seed files)"
        )
    return {"role": _ROLE_ALIASES[role.strip().lower()], "content": _content(content, where)}


def _turns(value: object, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError(f"field '{field}' must be a list of turns, got {type(value).__name__}")
    if not value:
        raise RecordError(f"field '{field}' is empty")
    return [_turn(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _check_order(messages: list[dict], field: str, last: str) -> None:
    """Optional system turn, then user/assistant alternating from user, ending with ``last``."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    if start == len(messages):
        raise RecordError(f"field '{field}' has only a system turn; add the user and assistant turns")
    expected = "user"
    for i, msg in enumerate(messages[start:], start=start):
        if msg["role"] != expected:
            after = f"after '{messages[i - 1]['role']}'" if i > 0 else "first"
            raise RecordError(
                f"{field}[{i}]: expected role '{expected}' {after}, got '{msg['role']}' (turns must alternate "
                "user/assistant after an optional first system turn)"
            )
        expected = "assistant" if expected == "user" else "user"
    if messages[-1]["role"] != last:
        raise RecordError(f"field '{field}' must end with a {last} turn, last is '{messages[-1]['role']}'")


def _conversation(value: object, field: str) -> list[dict]:
    messages = _turns(value, field)
    _check_order(messages, field, last="assistant")
    return messages


def _prompt(value: object, field: str = "prompt") -> list[dict]:
    """A prompt as messages: a string becomes one user turn; a list must end with a user turn."""
    if value is None:
        raise RecordError(f"missing field '{field}'")
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"field '{field}' is empty")
        return [{"role": "user", "content": value.strip()}]
    messages = _turns(value, field)
    _check_order(messages, field, last="user")
    return messages


def _answer(value: object, field: str) -> str:
    """An answer: a string, one assistant message, or a messages list whose last turn is the answer."""
    if value is None:
        raise RecordError(f"missing field '{field}'")
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"field '{field}' is empty")
        return value.strip()
    if isinstance(value, dict):
        turn = _turn(value, field)
    elif isinstance(value, list):
        if not value:
            raise RecordError(f"field '{field}' is empty")
        turn = _turn(value[-1], f"{field}[{len(value) - 1}]")
    else:
        raise RecordError(
            f"field '{field}' must be a string or an assistant message, got {type(value).__name__}"
        )
    if turn["role"] != "assistant":
        raise RecordError(f"field '{field}': the answer must be an assistant turn, got '{turn['role']}'")
    return turn["content"]


# -------------------------------------------------------------------------------------- seed formats


def detect_format(rec: dict) -> str | None:
    """The seed format a record's keys say it is, or None when no format fits."""
    keys = set(rec)
    if "messages" in keys:
        return "openai"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "dolly" if keys & {"response", "context", "category"} else "alpaca"
    if keys & {"prompt", "completion"}:
        return "prompt_completion"
    return None


def _user(text: str, extra: str) -> str:
    return f"{text}\n\n{extra}" if extra else text


def _alpaca(rec: dict) -> list[dict]:
    user = _user(_text(rec, "instruction"), _text(rec, "input", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec, "output")}]


def _dolly(rec: dict) -> list[dict]:
    user = _user(_text(rec, "instruction"), _text(rec, "context", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(rec, "response")}]


def _sharegpt(rec: dict) -> list[dict]:
    if "conversations" not in rec:
        raise RecordError("missing field 'conversations'")
    return _conversation(rec["conversations"], "conversations")


def _openai(rec: dict) -> list[dict]:
    if "messages" not in rec:
        raise RecordError("missing field 'messages'")
    return _conversation(rec["messages"], "messages")


def _prompt_completion(rec: dict) -> list[dict]:
    prompt = _prompt(rec.get("prompt"))
    return prompt + [{"role": "assistant", "content": _answer(rec.get("completion"), "completion")}]


_CONVERTERS = {
    "alpaca": _alpaca,
    "dolly": _dolly,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "prompt_completion": _prompt_completion,
}


def _seed_messages(rec: dict, fmt: str) -> tuple[str, list[dict]]:
    detected = detect_format(rec)
    if fmt == "auto":
        if detected is None:
            raise RecordError(f"unknown record format (keys: {sorted(rec)}); {_FORMAT_HELP}")
        return detected, _CONVERTERS[detected](rec)
    try:
        return fmt, _CONVERTERS[fmt](rec)
    except RecordError as exc:
        hint = ""
        if detected not in (None, fmt):
            hint = f"; the record looks like '{detected}': set format to auto or {detected} in {_SEED_KEY}"
        raise RecordError(f"declared format '{fmt}': {exc}{hint}") from exc


def load_seed_file(path: Path, fmt: str = "auto", system_prompt: str | None = None) -> dict:
    """Import one seed instruction file as instruction rows.

    ``fmt`` is "auto" (detected per record from its keys) or one of SEED_FORMATS (enforced: a record that
    does not fit is quarantined). ``system_prompt`` is put first in every conversation that has no system
    turn. Returns {records, quarantine, stats: {lines, imported, quarantined, by_format: {format: n}}}.
    """
    path = Path(path)
    if fmt != "auto" and fmt not in SEED_FORMATS:
        raise ValueError(
            f"{path}: unknown seed format {fmt!r} in {_SEED_KEY}; use auto or one of {SEED_FORMATS}"
        )
    records: list[dict] = []
    quarantine: list[dict] = []
    by_format: dict[str, int] = {}
    items = _read_items(path, _SEED_KEY)
    for line, raw, value in items:
        try:
            rec = _as_record(value)
            used, messages = _seed_messages(rec, fmt)
            category = rec.get("category") if used == "dolly" else None
            if category is not None and not (isinstance(category, str) and category.strip()):
                raise RecordError("field 'category' must be a non-empty string when given")
        except RecordError as exc:
            quarantine.append(_quarantine(path, line, str(exc), raw))
            continue
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        record_id = _id("seed", path.name, str(line), _canonical(messages))
        # Without a category, a file's rows spread over SEED_TOPIC_BUCKETS pseudo-topics (by id): the split
        # is by topic, and one topic per file would send the whole file to train or to validation.
        bucket = int(record_id, 16) % SEED_TOPIC_BUCKETS
        records.append(
            {
                "id": record_id,
                "messages": messages,
                "source": f"seed:{path.name}",
                "topic": category.strip() if category else f"seed:{path.stem}/{bucket}",
                "generator": f"seed:{used}",
                "split": "train",
            }
        )
        by_format[used] = by_format.get(used, 0) + 1
    stats = {
        "lines": len(items),
        "imported": len(records),
        "quarantined": len(quarantine),
        "by_format": by_format,
    }
    return {"records": records, "quarantine": quarantine, "stats": stats}


# ------------------------------------------------------------------------------------------ feedback


def parse_label(value: object) -> bool:
    """A thumbs up/down label as a bool: true/false, 1/0 (-1), "up"/"down", "thumbs_up", "good"/"bad"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if value == 1:
            return True
        if value in (0, -1):
            return False
    elif isinstance(value, str):
        word = value.strip().lower()
        if word in _LABEL_TRUE:
            return True
        if word in _LABEL_FALSE:
            return False
    raise RecordError(
        f"field 'label' must be true/false (or 1/0, up/down, thumbs_up/thumbs_down, good/bad), got {value!r}"
    )


def _feedback_kind(rec: dict) -> str:
    pairwise = bool({"chosen", "rejected"} & set(rec))
    binary = bool({"completion", "label"} & set(rec))
    if pairwise and binary:
        raise RecordError(
            "record has both pairwise (chosen/rejected) and binary (completion/label) fields; put each kind "
            "on its own line"
        )
    if pairwise:
        return "pairwise"
    if binary:
        return "binary"
    raise RecordError(
        f"unknown feedback record (keys: {sorted(rec)}); expected pairwise {{prompt, chosen, rejected}} or "
        "binary {prompt, completion, label}"
    )


def _pairwise_prompt(rec: dict) -> list[dict]:
    """The prompt; without one, the shared prefix of full chosen/rejected conversations (Anthropic HH style)."""
    if "prompt" in rec:
        return _prompt(rec["prompt"])
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) > 1 and len(rejected) > 1:
        prefix = _turns(chosen[:-1], "chosen")
        if prefix != _turns(rejected[:-1], "rejected"):
            raise RecordError(
                "missing field 'prompt', and the turns before the answer differ between 'chosen' and 'rejected'"
            )
        _check_order(prefix, "chosen", last="user")
        return prefix
    raise RecordError("missing field 'prompt'")


def _pairwise_row(rec: dict, path: Path, line: int) -> dict:
    prompt = _pairwise_prompt(rec)
    chosen = _answer(rec.get("chosen"), "chosen")
    rejected = _answer(rec.get("rejected"), "rejected")
    if normalize(chosen) == normalize(rejected):
        raise RecordError("fields 'chosen' and 'rejected' are the same text: no preference signal")
    return {
        "id": _id("human", path.name, str(line), _canonical([prompt, chosen, rejected])),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_source": "human",
        "rejected_source": "human",
        "judge_score": None,
    }


def _binary_row(rec: dict, path: Path, line: int) -> dict:
    prompt = _prompt(rec.get("prompt"))
    completion = _answer(rec.get("completion"), "completion")
    if "label" not in rec:
        raise RecordError("missing field 'label'")
    label = parse_label(rec["label"])
    return {
        "id": _id("human", path.name, str(line), _canonical([prompt, completion, label])),
        "prompt": prompt,
        "completion": completion,
        "label": label,
        "source": f"human:{path.name}",
    }


def load_feedback_file(path: Path) -> dict:
    """Import one human feedback file: pairwise preferences and binary (thumbs up/down) labels.

    Each record's kind comes from its keys (chosen/rejected: pairwise; completion/label: binary), so a file
    may mix both. Returns {pairwise: preference rows, binary: KTO rows, quarantine, stats: {lines, pairwise,
    binary, quarantined}}.
    """
    path = Path(path)
    rows: dict[str, list[dict]] = {"pairwise": [], "binary": []}
    quarantine: list[dict] = []
    items = _read_items(path, _FEEDBACK_KEY)
    for line, raw, value in items:
        try:
            rec = _as_record(value)
            kind = _feedback_kind(rec)
            build = _pairwise_row if kind == "pairwise" else _binary_row
            rows[kind].append(build(rec, path, line))
        except RecordError as exc:
            quarantine.append(_quarantine(path, line, str(exc), raw))
    stats = {
        "lines": len(items),
        "pairwise": len(rows["pairwise"]),
        "binary": len(rows["binary"]),
        "quarantined": len(quarantine),
    }
    return {"pairwise": rows["pairwise"], "binary": rows["binary"], "quarantine": quarantine, "stats": stats}


def write_quarantine(entries: list[dict], path: Path) -> Path:
    """Write quarantine entries {path, line, reason, raw} as JSONL, atomically (write, then rename)."""
    return write_jsonl(entries, Path(path))


def load_seed_files(files: list[tuple[Path, str]], system_prompt: str | None = None) -> dict:
    """Every (path, format) seed file: {extra: {"seed:<file name>": records}, quarantine, stats: {file
    name: stats}} (``extra`` is what instructions.build_instruction_set takes)."""
    extra, quarantine, stats = {}, [], {}
    for path, fmt in files:
        loaded = load_seed_file(Path(path), fmt, system_prompt)
        extra[f"seed:{Path(path).name}"] = loaded["records"]
        quarantine += loaded["quarantine"]
        stats[Path(path).name] = loaded["stats"]
    return {"extra": extra, "quarantine": quarantine, "stats": stats}


def load_feedback_files(paths: list[Path]) -> dict:
    """Every human feedback file merged: {pairwise, binary, quarantine}."""
    found: dict[str, list] = {"pairwise": [], "binary": [], "quarantine": []}
    for path in paths:
        loaded = load_feedback_file(Path(path))
        for key in found:
            found[key] += loaded[key]
    return found

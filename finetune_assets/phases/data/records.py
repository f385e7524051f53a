"""Reading JSON/JSONL record files line by line, with every bad line set aside under its number and reason.

Shared by the seed-file importer (phases.data.seeds) and the feedback importer (phases.data.feedback): both
read chat-shaped records whose fields must be named exactly. ``Rows`` is what the data builders return.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io

RAW_LIMIT = 2000

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


@dataclass(frozen=True)
class Rows:
    """A data builder's rows in the record contract plus the counts it kept."""

    records: list[dict]
    stats: dict


class RecordError(ValueError):
    """A record that cannot be imported; the message says which field to fix."""


def read_items(path: Path, config_key: str) -> list[io.JsonLine]:
    """Every non-blank record of a JSONL file (io.iter_jsonl: a bad line or byte costs only that line), or of a
    .json file holding one list of records.

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
        if path.suffix.lower() != ".json":
            return list(io.iter_jsonl(path))
        text = io.read_text_file(path)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text ({exc}); re-save it as UTF-8 or remove it from {config_key}"
        ) from exc
    except OSError as exc:
        raise ValueError(
            f"{path}: cannot be read ({exc}); fix its permissions or remove it from {config_key}"
        ) from exc
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
    return [
        io.JsonLine(i + 1, json.dumps(item, ensure_ascii=False), item, None) for i, item in enumerate(data)
    ]


def quarantine_entry(path: Path, line: int, reason: str, raw: str) -> dict:
    return {"path": str(path), "line": line, "reason": reason, "raw": raw[:RAW_LIMIT]}


def as_record(item: io.JsonLine) -> dict:
    if item.error:
        raise RecordError(f"{item.error}; each line must be one JSON object")
    value = item.value
    if not isinstance(value, dict):
        raise RecordError(f"record is a {type(value).__name__}, not a JSON object")
    return value


def stable_id(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode("utf-8")).hexdigest()[:16]


def canonical_json(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def field_text(rec: dict, field: str, required: bool = True) -> str:
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


def turns_of(value: object, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise RecordError(f"field '{field}' must be a list of turns, got {type(value).__name__}")
    if not value:
        raise RecordError(f"field '{field}' is empty")
    return [_turn(item, f"{field}[{i}]") for i, item in enumerate(value)]


def check_order(messages: list[dict], field: str, last: str) -> None:
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


def conversation_of(value: object, field: str) -> list[dict]:
    messages = turns_of(value, field)
    check_order(messages, field, last="assistant")
    return messages


def prompt_of(value: object, field: str = "prompt") -> list[dict]:
    """A prompt as messages: a string becomes one user turn; a list must end with a user turn."""
    if value is None:
        raise RecordError(f"missing field '{field}'")
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"field '{field}' is empty")
        return [{"role": "user", "content": value.strip()}]
    messages = turns_of(value, field)
    check_order(messages, field, last="user")
    return messages


def answer_of(value: object, field: str) -> str:
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

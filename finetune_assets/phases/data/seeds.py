"""Seed instructions and human feedback: import files people bring, quarantine what cannot be used.

Two importers, both pure (no dagster, no model code), both reading JSONL (one record per line) or a ``.json``
file holding a list of records:

- ``load_seed_file`` turns Alpaca, Dolly, ShareGPT, OpenAI-messages and prompt/completion records into
  instruction rows (the contract of phases/data/instructions.py: {id, messages, source, topic, generator, split}).
- ``load_feedback_file`` turns pairwise {prompt, chosen, rejected} records into preference rows (the contract
  of phases/data/preferences.py) and binary {prompt, completion, label} records (thumbs up/down) into KTO rows
  {id, prompt (messages), completion (str), label, source}; train.to_kto_example turns a row into the
  conversational form trl's KTOTrainer takes.

A record that cannot be used never vanishes: it goes to the quarantine list as
{path, line, reason, raw} (``line`` is 1-based; for a ``.json`` list it is the item's index + 1; ``reason``
names the field to fix) and is counted in the stats. ``write_quarantine`` writes that list as JSONL.
"""

from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.io import write_jsonl
from finetune_assets.phases.data.records import (
    RecordError,
    answer_of,
    as_record,
    canonical_json,
    conversation_of,
    field_text,
    prompt_of,
    quarantine_entry,
    read_items,
    stable_id,
)

SEED_FORMATS = ("alpaca", "dolly", "sharegpt", "openai", "prompt_completion")

SEED_TOPIC_BUCKETS = 10

_SEED_KEY = "instructions.seed_files"

_FORMAT_HELP = (
    "expected one of: instruction+output (alpaca), instruction+response (dolly), conversations (sharegpt), "
    "messages (openai), prompt+completion (prompt_completion)"
)


@dataclass(frozen=True)
class SeedFile:
    """One imported seed file: its instruction rows, the lines set aside, and the counts."""

    records: list[dict]
    quarantine: list[dict]  # {path, line, reason, raw}
    stats: dict  # {lines, imported, quarantined, by_format: {format: n}}


@dataclass(frozen=True)
class SeedFiles:
    """Every seed file imported: the rows by source, all set-aside lines, and each file's counts."""

    extra: dict[str, list[dict]]  # {"seed:<label>": records}, what instructions.build_instruction_set takes
    quarantine: list[dict]
    stats: dict[str, dict]  # {label: SeedFile.stats}


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
    user = _user(field_text(rec, "instruction"), field_text(rec, "input", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": field_text(rec, "output")}]


def _dolly(rec: dict) -> list[dict]:
    user = _user(field_text(rec, "instruction"), field_text(rec, "context", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": field_text(rec, "response")}]


def _sharegpt(rec: dict) -> list[dict]:
    if "conversations" not in rec:
        raise RecordError("missing field 'conversations'")
    return conversation_of(rec["conversations"], "conversations")


def _openai(rec: dict) -> list[dict]:
    if "messages" not in rec:
        raise RecordError("missing field 'messages'")
    return conversation_of(rec["messages"], "messages")


def _prompt_completion(rec: dict) -> list[dict]:
    prompt = prompt_of(rec.get("prompt"))
    return prompt + [{"role": "assistant", "content": answer_of(rec.get("completion"), "completion")}]


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


def load_seed_file(
    path: Path, fmt: str = "auto", system_prompt: str | None = None, label: str | None = None
) -> SeedFile:
    """Import one seed instruction file as instruction rows.

    ``fmt`` is "auto" (detected per record from its keys) or one of SEED_FORMATS (enforced: a record that
    does not fit is quarantined). ``system_prompt`` is put first in every conversation that has no system
    turn. ``label`` names the file in record ids and sources (default: its name; load_seed_files gives
    same-named files distinct labels). Returns SeedFile(records, quarantine, stats: {lines, imported,
    quarantined, by_format: {format: n}}).
    """
    path = Path(path)
    if fmt != "auto" and fmt not in SEED_FORMATS:
        raise ValueError(
            f"{path}: unknown seed format {fmt!r} in {_SEED_KEY}; use auto or one of {SEED_FORMATS}"
        )
    records: list[dict] = []
    quarantine: list[dict] = []
    by_format: dict[str, int] = {}
    items = read_items(path, _SEED_KEY)
    label = label or path.name
    for item in items:
        line, raw = item.number, item.raw
        try:
            rec = as_record(item)
            used, messages = _seed_messages(rec, fmt)
            category = rec.get("category") if used == "dolly" else None
            if category is not None and not (isinstance(category, str) and category.strip()):
                raise RecordError("field 'category' must be a non-empty string when given")
        except RecordError as exc:
            quarantine.append(quarantine_entry(path, line, str(exc), raw))
            continue
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        record_id = stable_id("seed", label, str(line), canonical_json(messages))
        # Without a category, a file's rows spread over SEED_TOPIC_BUCKETS pseudo-topics (by id): the split
        # is by topic, and one topic per file would send the whole file to train or to validation.
        bucket = int(record_id, 16) % SEED_TOPIC_BUCKETS
        records.append(
            {
                "id": record_id,
                "messages": messages,
                "source": f"seed:{label}",
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
    return SeedFile(records, quarantine, stats)


def write_quarantine(entries: list[dict], path: Path) -> Path:
    """Write quarantine entries {path, line, reason, raw} as JSONL, atomically (write, then rename)."""
    return write_jsonl(entries, Path(path))


def load_seed_files(files: list[tuple[Path, str]], system_prompt: str | None = None) -> SeedFiles:
    """Every (path, format) seed file: SeedFiles(extra: {"seed:<label>": records}, quarantine, stats: {label:
    stats}) (``extra`` is what instructions.build_instruction_set takes). A file's label is its name, with as
    many parent folders as it takes to tell same-named files apart (io.unique_labels)."""
    extra, quarantine, stats = {}, [], {}
    labels = io.unique_labels([Path(path) for path, _ in files])
    for (path, fmt), label in zip(files, labels, strict=True):
        if f"seed:{label}" in extra:  # the same file listed twice is imported once
            continue
        loaded = load_seed_file(Path(path), fmt, system_prompt, label)
        extra[f"seed:{label}"] = loaded.records
        quarantine += loaded.quarantine
        stats[label] = loaded.stats
    return SeedFiles(extra, quarantine, stats)

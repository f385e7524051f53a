"""Importing human feedback files: pairwise preferences (prompt, chosen, rejected) and thumbs up/down.

Each line is one record; a bad line is quarantined with its number and reason and the rest go through.
Pairwise rows join the preference pairs; binary rows are kept for KTO.
"""

from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.phases.data.dedup import normalize
from finetune_assets.phases.data.records import (
    RecordError,
    answer_of,
    as_record,
    canonical_json,
    check_order,
    prompt_of,
    quarantine_entry,
    read_items,
    stable_id,
    turns_of,
)

_FEEDBACK_KEY = "preferences.feedback_files"


@dataclass(frozen=True)
class Feedback:
    """Imported human feedback: preference rows, KTO rows, the lines set aside, and the counts."""

    pairwise: list[dict]  # preference rows (the contract of phases/data/preferences.py)
    binary: list[dict]  # KTO rows {id, prompt, completion, label, source}
    quarantine: list[dict]  # {path, line, reason, raw}
    stats: dict  # {lines, pairwise, binary, quarantined}


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
        return prompt_of(rec["prompt"])
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) > 1 and len(rejected) > 1:
        prefix = turns_of(chosen[:-1], "chosen")
        if prefix != turns_of(rejected[:-1], "rejected"):
            raise RecordError(
                "missing field 'prompt', and the turns before the answer differ between 'chosen' and 'rejected'"
            )
        check_order(prefix, "chosen", last="user")
        return prefix
    raise RecordError("missing field 'prompt'")


def _pairwise_row(rec: dict, file_label: str, line: int) -> dict:
    prompt = _pairwise_prompt(rec)
    chosen = answer_of(rec.get("chosen"), "chosen")
    rejected = answer_of(rec.get("rejected"), "rejected")
    if normalize(chosen) == normalize(rejected):
        raise RecordError("fields 'chosen' and 'rejected' are the same text: no preference signal")
    return {
        "id": stable_id("human", file_label, str(line), canonical_json([prompt, chosen, rejected])),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_source": "human",
        "rejected_source": "human",
        "judge_score": None,
    }


def _binary_row(rec: dict, file_label: str, line: int) -> dict:
    prompt = prompt_of(rec.get("prompt"))
    completion = answer_of(rec.get("completion"), "completion")
    if "label" not in rec:
        raise RecordError("missing field 'label'")
    label = parse_label(rec["label"])
    return {
        "id": stable_id("human", file_label, str(line), canonical_json([prompt, completion, label])),
        "prompt": prompt,
        "completion": completion,
        "label": label,
        "source": f"human:{file_label}",
    }


def load_feedback_file(path: Path, label: str | None = None) -> Feedback:
    """Import one human feedback file: pairwise preferences and binary (thumbs up/down) labels.

    ``label`` names the file in row ids and sources (default: its name).
    Each record's kind comes from its keys (chosen/rejected: pairwise; completion/label: binary), so a file
    may mix both. Returns Feedback(pairwise: preference rows, binary: KTO rows, quarantine, stats: {lines,
    pairwise, binary, quarantined}).
    """
    path = Path(path)
    rows: dict[str, list[dict]] = {"pairwise": [], "binary": []}
    quarantine: list[dict] = []
    items = read_items(path, _FEEDBACK_KEY)
    label = label or path.name
    for item in items:
        try:
            rec = as_record(item)
            kind = _feedback_kind(rec)
            build = _pairwise_row if kind == "pairwise" else _binary_row
            rows[kind].append(build(rec, label, item.number))
        except RecordError as exc:
            quarantine.append(quarantine_entry(path, item.number, str(exc), item.raw))
    stats = {
        "lines": len(items),
        "pairwise": len(rows["pairwise"]),
        "binary": len(rows["binary"]),
        "quarantined": len(quarantine),
    }
    return Feedback(rows["pairwise"], rows["binary"], quarantine, stats)


def load_feedback_files(paths: list[Path]) -> Feedback:
    """Every human feedback file merged into one Feedback; its stats are the files' counts summed."""
    pairwise, binary, quarantine = [], [], []
    stats = {"lines": 0, "pairwise": 0, "binary": 0, "quarantined": 0}
    paths = list(dict.fromkeys(Path(p) for p in paths))  # a file listed twice counts once
    for path, label in zip(paths, io.unique_labels(paths), strict=True):
        loaded = load_feedback_file(path, label)
        pairwise += loaded.pairwise
        binary += loaded.binary
        quarantine += loaded.quarantine
        stats = {key: stats[key] + loaded.stats[key] for key in stats}
    return Feedback(pairwise, binary, quarantine, stats)


def merge(parts: list[Feedback]) -> Feedback:
    """Several Feedback sources as one; counts summed over the keys they share."""
    stats = {"lines": 0, "pairwise": 0, "binary": 0, "quarantined": 0}
    for part in parts:
        stats = {key: stats[key] + part.stats.get(key, 0) for key in stats}
    return Feedback(
        [r for p in parts for r in p.pairwise],
        [r for p in parts for r in p.binary],
        [q for p in parts for q in p.quarantine],
        {
            **stats,
            "pairwise": sum(len(p.pairwise) for p in parts),
            "binary": sum(len(p.binary) for p in parts),
        },
    )

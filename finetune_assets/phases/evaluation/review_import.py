"""Importing human review labels: CSV or JSONL exported by phases.evaluation.review, checked row by row.

A bad row is reported with its line number and reason and set aside; the rest are imported. Blind exports
are decoded with their key file. ``current_labels`` keeps the labels whose answer is still the one reviewed.
"""

import csv
import json
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

from finetune_assets.phases.evaluation.review import (
    BLIND_PREFIX,
    KEY_FILE,
    KINDS,
    REQUIRED_COLUMNS,
    answer_digest,
    clean_text,
    review_id,
)

_TRUE = frozenset({"1", "1.0", "yes", "y", "true", "correct"})

_FALSE = frozenset({"0", "0.0", "no", "n", "false", "incorrect", "wrong"})

_LABEL_HELP = "use 1/0, yes/no, y/n, true/false, correct/incorrect/wrong"


def parse_label(value) -> bool | None:
    """A human/auto label as bool; None when blank. Raises ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a label ({_LABEL_HELP})")


def _read_csv(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line where the record starts, row or None, error or None) of a CSV file (header normalised)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # a spreadsheet saved it in a legacy code page; label columns are ASCII anyway
        text = raw.decode("cp1252", errors="replace")
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)  # locale-dependent spreadsheets save with ; or tabs
    reader = csv.reader(StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, None, f"unreadable CSV: {exc}"
            return
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                yield start, None, f"header lacks column(s) {', '.join(missing)}"
                return
            continue
        extra = cells[len(header) :]
        if any(c.strip() for c in extra):
            yield start, None, f"row has {len(cells)} cells, the header {len(header)} (shifted cells?)"
            continue
        yield start, dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=False)), None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, None, f"invalid JSON: {exc.msg}"
                continue
            if not isinstance(row, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, {str(k).strip().lower(): v for k, v in row.items()}, None


def _read_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    raise ValueError(f"{path}: expected a .csv or .jsonl review file")


def _load_key(path: Path) -> dict:
    key = json.loads(Path(path).read_text(encoding="utf-8"))
    if (
        not isinstance(key, dict)
        or not isinstance(key.get("codes"), dict)
        or not isinstance(key.get("rows"), dict)
    ):
        raise ValueError(f"{path}: not a review key (expected 'codes' and 'rows')")
    return key


def _validate(row: dict, key: dict | None, key_hint: str) -> tuple[dict | None, list[tuple[str, str]]]:
    """A labelled row as a label dict, or None and the (field, reason) list of what is wrong."""
    bad: list[tuple[str, str]] = []
    rid = clean_text(row.get("review_id"))
    if not rid:
        bad.append(("review_id", "review_id is missing"))
    kind = clean_text(row.get("kind")).lower()
    if kind not in KINDS:
        bad.append(("kind", f"kind {kind!r} is not one of {'|'.join(KINDS)}" if kind else "kind is missing"))
    item_id = clean_text(row.get("item_id"))
    if not item_id:
        bad.append(("item_id", "item_id is missing"))

    raw_variant = clean_text(row.get("variant"))
    variant, key_row = raw_variant, None
    if not raw_variant:
        bad.append(("variant", "variant is missing"))
    elif raw_variant.startswith(BLIND_PREFIX):
        variant = ""
        if key is None:
            bad.append(
                ("variant", f"variant {raw_variant!r} is a blind code and no review key was found{key_hint}")
            )
        elif raw_variant not in key["codes"]:
            bad.append(("variant", f"variant code {raw_variant!r} is not in the review key"))
        else:
            variant = key["codes"][raw_variant]
            key_row = key["rows"].get(rid)
            if rid and (key_row is None or key_row.get("variant") != variant):
                bad.append(
                    (
                        "variant",
                        f"code {raw_variant!r} does not match the review key (key of another export?)",
                    )
                )

    try:
        human = parse_label(row.get("human_correct"))
    except ValueError as exc:
        human = None
        bad.append(("human_correct", f"human_correct: {exc}"))
    raw_auto = row.get("auto_correct")
    if clean_text(raw_auto) == "" and key_row is not None:
        raw_auto = key_row.get("auto_correct")
    try:
        auto = parse_label(raw_auto)
        if auto is None:
            bad.append(("auto_correct", "auto_correct is missing"))
    except ValueError as exc:
        auto = None
        bad.append(("auto_correct", f"auto_correct: {exc}"))

    if rid and variant and kind in KINDS and item_id and rid != review_id(variant, kind, item_id):
        bad.append(
            ("review_id", "review_id does not match variant/kind/item_id (edited row or shifted cells?)")
        )
    if bad:
        return None, bad
    label = {
        "review_id": rid,
        "variant": variant,
        "kind": kind,
        "item_id": item_id,
        "human_correct": human,
        "auto_correct": auto,
        "reviewer": clean_text(row.get("reviewer")),
        "notes": clean_text(row.get("notes")),
        "answer_sha1": answer_digest(_unescape(clean_text(row.get("answer")))),
    }
    return label, []


def _unescape(text: str) -> str:
    """Undo _spreadsheet_safe's leading quote (a CSV cell starting with = + - @)."""
    return text[1:] if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@") else text


def current_labels(labels: list[dict], sample_rows: list[dict]) -> list[dict]:
    """The labels that judge answers in this review sample (same review_id and the same answer text): labels
    of answers an earlier model gave stay stored but do not count for the models evaluated now."""
    current = {(r["review_id"], answer_digest(str(r.get("answer") or ""))) for r in sample_rows}
    return [label for label in labels if (label["review_id"], label.get("answer_sha1")) in current]


def import_review(paths: list[Path], key_path: Path | None = None) -> dict:
    """Read filled review files (``.csv`` or ``.jsonl``, by suffix) in order and validate every row.

    A row needs review_id, variant (a blind code is resolved through the key: ``key_path``, else a
    ``review_key.json`` beside the file), kind, item_id, a parseable human_correct and an auto verdict (its
    column, or the key's when blind); review_id must equal ``review_id(variant, kind, item_id)``. A bad row is
    set aside in ``problems`` as {file, line (where the record starts), review_id, fields, reason} and the rest
    goes through. A blank human_correct means "not labelled yet": skipped and counted in ``unlabelled`` (distinct
    rows never labelled in any file). A review_id labelled more than once: the last one read wins (files in the
    given order), each repeat recorded in ``duplicates`` as {review_id, kept, replaced, same_label}.

    Returns {"labels": [{review_id, variant, kind, item_id, human_correct, auto_correct, reviewer, notes}],
    "problems": [...], "unlabelled": n, "duplicates": [...], "n_rows": rows read}.
    """
    explicit_key = _load_key(key_path) if key_path is not None else None
    labels: dict[str, dict] = {}
    where: dict[str, dict] = {}
    problems: list[dict] = []
    duplicates: list[dict] = []
    blank: set[str] = set()
    n_rows = 0
    for path in map(Path, paths):
        key, key_hint = explicit_key, ""
        if key is None:
            beside = path.parent / KEY_FILE
            key = _load_key(beside) if beside.exists() else None
            key_hint = f" (pass key_path or put {KEY_FILE} beside the file)"
        for line, row, error in _read_rows(path):
            here = {"file": str(path), "line": line}
            if row is None:
                problems.append({**here, "review_id": None, "fields": [], "reason": error})
                continue
            n_rows += 1
            rid = clean_text(row.get("review_id"))
            if clean_text(row.get("human_correct")) == "":
                blank.add(rid or f"{path}:{line}")
                continue
            label, bad = _validate(row, key, key_hint)
            if label is None:
                problems.append(
                    {
                        **here,
                        "review_id": rid or None,
                        "fields": [f for f, _ in bad],
                        "reason": "; ".join(r for _, r in bad),
                    }
                )
                continue
            if rid in labels:
                same = labels[rid]["human_correct"] == label["human_correct"]
                duplicates.append(
                    {"review_id": rid, "kept": here, "replaced": where[rid], "same_label": same}
                )
            labels[rid] = label
            where[rid] = here
    return {
        "labels": list(labels.values()),
        "problems": problems,
        "unlabelled": len(blank - labels.keys()),
        "duplicates": duplicates,
        "n_rows": n_rows,
    }

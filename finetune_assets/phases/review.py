"""Human review of model answers: export a sample for expert labelling, import the labels, measure agreement.

The automatic judges (``phases.evaluate``) call a glossary definition correct by ROUGE-L / embedding
similarity and a generated QA answer correct by a ROUGE-L threshold. Experts check a sample of those verdicts,
which gives a human hallucination index / QA accuracy per variant and tells how far the auto-judge can be
trusted (agreement and Cohen's kappa).

Workflow:

1. ``eval_reports`` calls ``export_review`` with every variant's ``definitions.jsonl`` (kind ``glossary``) and
   ``qa.jsonl`` (kind ``qa``) rows. It writes ``review_sample.csv`` (for a spreadsheet) and
   ``review_sample.jsonl`` (for scripts) with the same rows: the SAME items for every variant, so experts
   compare variants on the same questions. With ``blind=True`` the rows are shuffled, the variant column holds
   opaque codes (``blind-A``, ``blind-B``...) and the auto verdicts are hidden; ``review_key.json`` beside the
   sample maps them back. Give experts a copy: a later export overwrites the sample in place.
2. Experts fill ``human_correct`` (1/0, yes/no, y/n, true/false, correct/incorrect/wrong; case-insensitive),
   optionally ``reviewer`` and ``notes``. Rows left blank are "not labelled yet". Columns may be reordered;
   ``review_id``, ``variant``, ``kind`` and ``item_id`` must stay as exported (``review_id`` is a hash of the
   other three, so an edited or shifted row is detected).
3. ``finetune-assets review import FILE... [--key review_key.json]`` runs ``import_review`` (bad rows are
   reported with file, line and field, and set aside; the rest goes through; for a duplicate ``review_id`` the
   last file wins) and ``save_labels`` stores them in ``labels.jsonl`` (merged with earlier imports).
4. The report loads them (``load_labels``) and shows ``agreement``: per variant and kind, the human rate, the
   auto-judge rate on the same items, the share where both agree, and Cohen's kappa.

File schemas:
- ``review_sample.csv`` / ``.jsonl``: ``REVIEW_COLUMNS`` = review_id, variant, kind (glossary|qa), item_id,
  prompt (term or question), reference, answer, auto_correct (1/0; empty when blind), human_correct (empty),
  reviewer, notes. The CSV is UTF-8 with a byte-order mark (Excel reads accents correctly) and text cells
  starting with ``= + - @`` get a leading ``'`` so a spreadsheet does not run them as formulas; the JSONL
  keeps the exact texts (``auto_correct``/``human_correct`` as 1/0/null there).
- ``review_key.json`` (blind only): {"seed", "codes": {code: variant}, "rows": {review_id: {"variant",
  "auto_correct"}}}.
- ``labels.jsonl``: one row per review_id: {review_id, variant, kind, item_id, human_correct (bool),
  auto_correct (bool), reviewer, notes}.

Pure stdlib (csv, json, hashlib, random); no dagster.
"""

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from io import StringIO
from pathlib import Path

from finetune_assets import io

KINDS: tuple[str, ...] = ("glossary", "qa")
REVIEW_COLUMNS: list[str] = [
    "review_id",
    "variant",
    "kind",
    "item_id",
    "prompt",
    "reference",
    "answer",
    "auto_correct",
    "human_correct",
    "reviewer",
    "notes",
]
REQUIRED_COLUMNS: tuple[str, ...] = ("review_id", "variant", "kind", "item_id", "human_correct")
SAMPLE_CSV = "review_sample.csv"
SAMPLE_JSONL = "review_sample.jsonl"
KEY_FILE = "review_key.json"
LABELS_FILE = "labels.jsonl"
BLIND_PREFIX = "blind-"

_TRUE = frozenset({"1", "1.0", "yes", "y", "true", "correct"})
_FALSE = frozenset({"0", "0.0", "no", "n", "false", "incorrect", "wrong"})
_LABEL_HELP = "use 1/0, yes/no, y/n, true/false, correct/incorrect/wrong"
# Per kind: (field holding the prompt, fallback for a missing id).
_PROMPT_FIELD = {"glossary": "term", "qa": "question"}
_TEXT_COLUMNS = ("prompt", "reference", "answer", "notes")


def review_id(variant: str, kind: str, item_id: str) -> str:
    """Stable short id of one (variant, kind, item) row: first 12 hex digits of sha1("variant/kind/item_id")."""
    return hashlib.sha1(f"{variant}/{kind}/{item_id}".encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------ export
def _item_id(kind: str, row: dict) -> str:
    value = row.get("id")
    if value is None or str(value).strip() == "":
        value = row.get(_PROMPT_FIELD[kind])
    if value is None or str(value).strip() == "":
        raise ValueError(f"{kind} row without id or {_PROMPT_FIELD[kind]}: {row!r}")
    return str(value)


def _items_of(variant: str, kinds: dict[str, list[dict]]) -> dict[tuple[str, str], dict]:
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown kinds {sorted(unknown)} (expected {list(KINDS)})")
    items: dict[tuple[str, str], dict] = {}
    for kind in KINDS:
        for row in kinds.get(kind) or []:
            if "correct" not in row:
                raise ValueError(
                    f"variant {variant!r}: {kind} row without an auto verdict 'correct': {row!r}"
                )
            items.setdefault((kind, _item_id(kind, row)), row)  # first wins on a repeated id
    return items


def _order_key(seed: int, kind: str, item_id: str) -> str:
    return hashlib.sha1(f"{seed}\x1f{kind}\x1f{item_id}".encode()).hexdigest()


def _quotas(counts: dict[str, int], total: int) -> dict[str, int]:
    """Split ``total`` across kinds in proportion to ``counts`` (largest remainder; sums to total)."""
    available = sum(counts.values())
    if available == 0 or total == 0:
        return dict.fromkeys(counts, 0)
    exact = {k: total * c / available for k, c in counts.items()}
    quotas = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(counts, key=lambda k: (-(exact[k] - quotas[k]), KINDS.index(k)))
    for k in by_remainder[: total - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


def _spreadsheet_safe(text: str) -> str:
    """Prefix a cell a spreadsheet would run as a formula (=, +, -, @) with an apostrophe."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _blind_codes(variants: list[str], seed: int) -> dict[str, str]:
    """variant -> opaque code (blind-A, blind-B, ...), assigned in a seeded shuffled order."""
    shuffled = list(variants)
    random.Random(f"review-codes:{seed}").shuffle(shuffled)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    codes = {}
    for i, variant in enumerate(shuffled):
        suffix = (
            letters[i] if i < len(letters) else f"{letters[i // len(letters) - 1]}{letters[i % len(letters)]}"
        )
        codes[variant] = f"{BLIND_PREFIX}{suffix}"
    return codes


def export_review(
    variant_rows: dict[str, dict[str, list[dict]]],
    out_dir: Path,
    *,
    per_variant: int,
    seed: int,
    blind: bool = False,
) -> dict:
    """Write a review sample of up to ``per_variant`` items per variant: the same items for every variant.

    ``variant_rows``: {variant: {"glossary": definitions.jsonl rows, "qa": qa.jsonl rows}} (a kind may be
    missing). Only items every variant answered are eligible (``not_shared`` counts the others). Items are
    ranked by a sha1 of (seed, kind, item id), so the pick is stable and does not depend on row order, and the
    kinds are mixed in proportion to their eligible counts. Rows come item by item (each item's variants
    together, in ``variant_rows`` order); with ``blind`` they are shuffled (seeded), the variant becomes an
    opaque code and ``auto_correct`` is left empty, both recorded in ``review_key.json``. A non-blind export
    removes a stale ``review_key.json`` from ``out_dir``.

    Returns {"paths": {"csv", "jsonl"[, "key"]}, "n": rows written, "n_items": items per variant,
    "per_kind": {kind: items}, "variants": [...], "not_shared": items missing from some variant}.
    """
    if per_variant < 0:
        raise ValueError(f"per_variant must be >= 0, got {per_variant}")
    out_dir = Path(out_dir)
    variants = list(variant_rows)
    per_variant_items = {v: _items_of(v, kinds) for v, kinds in variant_rows.items()}
    all_keys = set().union(*per_variant_items.values()) if variants else set()
    shared = set.intersection(*(set(items) for items in per_variant_items.values())) if variants else set()

    ranked = {
        kind: sorted((k for k in shared if k[0] == kind), key=lambda k: _order_key(seed, *k))
        for kind in KINDS
    }
    quotas = _quotas({kind: len(keys) for kind, keys in ranked.items()}, min(per_variant, len(shared)))
    picked = [key for kind in KINDS for key in ranked[kind][: quotas[kind]]]
    picked.sort(key=lambda k: _order_key(seed, *k))

    codes = _blind_codes(variants, seed) if blind else {}
    rows: list[dict] = []
    key_rows: dict[str, dict] = {}
    for kind, item in picked:
        for variant in variants:
            src = per_variant_items[variant][(kind, item)]
            rid = review_id(variant, kind, item)
            auto = 1 if src["correct"] else 0
            rows.append(
                {
                    "review_id": rid,
                    "variant": codes.get(variant, variant),
                    "kind": kind,
                    "item_id": item,
                    "prompt": str(src.get(_PROMPT_FIELD[kind]) or ""),
                    "reference": str(src.get("reference") or ""),
                    "answer": str(src.get("generated") or ""),
                    "auto_correct": None if blind else auto,
                    "human_correct": None,
                    "reviewer": "",
                    "notes": "",
                }
            )
            key_rows[rid] = {"variant": variant, "auto_correct": auto}
    if blind:
        random.Random(f"review-rows:{seed}").shuffle(rows)

    buf = StringIO()
    writer = csv.DictWriter(buf, fieldnames=REVIEW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {k: "" if v is None else v for k, v in row.items()}
        writer.writerow({k: _spreadsheet_safe(v) if k in _TEXT_COLUMNS else v for k, v in cells.items()})
    paths = {
        "csv": str(io.write_text("\ufeff" + buf.getvalue(), out_dir / SAMPLE_CSV)),
        "jsonl": str(io.write_jsonl(rows, out_dir / SAMPLE_JSONL)),
    }
    key_path = out_dir / KEY_FILE
    if blind:
        key = {"seed": seed, "codes": {code: v for v, code in codes.items()}, "rows": key_rows}
        paths["key"] = str(io.write_json(key, key_path))
    else:
        key_path.unlink(missing_ok=True)
    return {
        "paths": paths,
        "n": len(rows),
        "n_items": len(picked),
        "per_kind": {kind: sum(k[0] == kind for k in picked) for kind in KINDS},
        "variants": variants,
        "not_shared": len(all_keys - shared),
    }


# ------------------------------------------------------------------------------------------------------ import
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


def _text(value) -> str:
    return "" if value is None else str(value).strip()


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
    rid = _text(row.get("review_id"))
    if not rid:
        bad.append(("review_id", "review_id is missing"))
    kind = _text(row.get("kind")).lower()
    if kind not in KINDS:
        bad.append(("kind", f"kind {kind!r} is not one of {'|'.join(KINDS)}" if kind else "kind is missing"))
    item_id = _text(row.get("item_id"))
    if not item_id:
        bad.append(("item_id", "item_id is missing"))

    raw_variant = _text(row.get("variant"))
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
    if _text(raw_auto) == "" and key_row is not None:
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
        "reviewer": _text(row.get("reviewer")),
        "notes": _text(row.get("notes")),
        "answer_sha1": answer_digest(_unescape(_text(row.get("answer")))),
    }
    return label, []


def answer_digest(answer: str) -> str:
    """What ties a label to the answer it judged: a retrained model answering differently is not covered."""
    return hashlib.sha1(answer.strip().encode()).hexdigest()[:16]


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
            rid = _text(row.get("review_id"))
            if _text(row.get("human_correct")) == "":
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


# --------------------------------------------------------------------------------------------------- agreement
def _stats(pairs: Iterable[tuple[bool, bool]]) -> dict:
    """Counts and rates of (human, auto) verdict pairs; Cohen's kappa in exact integer arithmetic."""
    a = b = c = d = 0  # both correct, human only, auto only, both wrong
    for human, auto in pairs:
        if human and auto:
            a += 1
        elif human:
            b += 1
        elif auto:
            c += 1
        else:
            d += 1
    n = a + b + c + d
    # kappa = (p_o - p_e) / (1 - p_e) with p_o = (a+d)/n, p_e = ((a+b)(a+c) + (c+d)(b+d)) / n^2
    chance = (a + b) * (a + c) + (c + d) * (b + d)
    kappa = (n * (a + d) - chance) / (n * n - chance) if n and n * n != chance else None
    return {
        "n_labelled": n,
        "human_correct": a + b,
        "auto_correct": a + c,
        "human_rate": (a + b) / n if n else None,
        "auto_rate": (a + c) / n if n else None,
        "agreement": (a + d) / n if n else None,
        "cohen_kappa": kappa,
        "confusion": {"both_correct": a, "human_only": b, "auto_only": c, "both_wrong": d},
    }


def agreement(labels: list[dict]) -> dict:
    """Human vs auto-judge verdicts, per variant and kind, per kind, and overall.

    Each block: n_labelled, human_correct / auto_correct counts, human_rate (share the experts judged correct:
    the human hallucination index for glossary, the human QA accuracy for qa), auto_rate (the auto-judge on the
    same items), agreement (share where both say the same), cohen_kappa and the 2x2 ``confusion``. Rates are
    None without labels. Kappa is None when undefined: no labels, or both raters constant and equal (chance
    agreement 1); constant but opposite raters give 0 (chance agreement 0, as scikit-learn).
    Returns {"variants": {variant: {"glossary": {...}, "qa": {...}}}, "per_kind": {kind: {...}},
    "overall": {...}, "reviewers": [names]}.
    """
    groups: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for label in labels:
        pair = (bool(label["human_correct"]), bool(label["auto_correct"]))
        groups.setdefault((label["variant"], label["kind"]), []).append(pair)
    variants = sorted({v for v, _ in groups})
    return {
        "variants": {v: {kind: _stats(groups.get((v, kind), [])) for kind in KINDS} for v in variants},
        "per_kind": {
            kind: _stats(p for (_, k), pairs in groups.items() if k == kind for p in pairs) for kind in KINDS
        },
        "overall": _stats(p for pairs in groups.values() for p in pairs),
        "reviewers": sorted({r for label in labels if (r := _text(label.get("reviewer")))}),
    }


# ------------------------------------------------------------------------------------------------------ storage
def save_labels(labels_result: dict | list[dict], dest_dir: Path, *, merge: bool = True) -> dict:
    """Write labels (an ``import_review`` result or its ``labels`` list) to ``dest_dir/labels.jsonl`` atomically.

    With ``merge`` (default) labels already stored are kept and a new label for the same review_id replaces
    the old one, so importing batches one by one accumulates them; ``merge=False`` replaces the file.
    Returns {"path", "n": labels stored, "added", "replaced"}.
    """
    new = labels_result["labels"] if isinstance(labels_result, dict) else labels_result
    stored = {row["review_id"]: row for row in (load_labels(dest_dir) if merge else [])}
    replaced = sum(row["review_id"] in stored for row in new)
    for row in new:
        stored[row["review_id"]] = row
    path = io.write_jsonl(stored.values(), Path(dest_dir) / LABELS_FILE)
    return {"path": str(path), "n": len(stored), "added": len(new) - replaced, "replaced": replaced}


def load_labels(dest_dir: Path) -> list[dict]:
    """Labels stored by ``save_labels`` ([] when none were imported yet)."""
    path = Path(dest_dir) / LABELS_FILE
    return io.read_jsonl(path) if path.exists() else []


def labels_dir(home: Path) -> Path:
    """Where `finetune-assets review import` keeps expert labels for the next report."""
    return Path(home) / "inputs" / "review"


def rows_from_results(results: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """{variant: {"glossary": definition rows, "qa": QA answer rows}} from evaluate_variant results (their
    definitions.jsonl / qa.jsonl files): the input of export_review."""
    sources = (("glossary", "definitions"), ("qa", "qa"))
    return {
        r["variant"]: {
            kind: io.read_jsonl(Path(r["files"][key])) if key in r["files"] else [] for kind, key in sources
        }
        for r in results
    }

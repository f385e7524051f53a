"""Human review of model answers: export a sample for expert labelling, import the labels, measure agreement.

The automatic judges (``phases.evaluation.variant``) call a glossary definition correct by ROUGE-L / embedding
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
import random
from collections.abc import Iterable
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

# Per kind: (field holding the prompt, fallback for a missing id).
_PROMPT_FIELD = {"glossary": "term", "qa": "question"}

_TEXT_COLUMNS = ("prompt", "reference", "answer", "notes")


def review_id(variant: str, kind: str, item_id: str) -> str:
    """Stable short id of one (variant, kind, item) row: first 12 hex digits of sha1("variant/kind/item_id")."""
    return hashlib.sha1(f"{variant}/{kind}/{item_id}".encode()).hexdigest()[:12]


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


def clean_text(value) -> str:
    return "" if value is None else str(value).strip()


def answer_digest(answer: str) -> str:
    """What ties a label to the answer it judged: a retrained model answering differently is not covered."""
    return hashlib.sha1(answer.strip().encode()).hexdigest()[:16]


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
        "reviewers": sorted({r for label in labels if (r := clean_text(label.get("reviewer")))}),
    }


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

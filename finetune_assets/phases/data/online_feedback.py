"""Live feedback as training data: the serving log's ratings of one day, turned into preference rows.

What each kind of feedback becomes (``from_log``):

- a **preferred answer** (the user wrote what they wanted) -> a preference pair: chosen = the preferred
  answer, rejected = the logged answer;
- a **thumbs up/down** -> a KTO row (prompt, completion, label), and where the same prompt got an up on one
  answer and a down on another (an A/B test shows two variants the same question), a preference pair of the
  two: chosen = the upvoted answer, rejected = the downvoted one. A user who rates one answer twice counts
  with their last rating.

The prompt is the conversation the client sent, as logged. Rows are checked like any human feedback file
(phases.data.records: roles, order, non-empty text) and a bad one is set aside with its reason; then exact
and near duplicates (MinHash, phases.data.dedup) and every row sharing an n-gram with the eval sets are
dropped, as for every other training source. The result is a ``feedback.Feedback``: preference_pairs merges
it with the other sources.
"""

from pathlib import Path

from finetune_assets import io
from finetune_assets.phases.data.dedup import find_duplicates, normalize
from finetune_assets.phases.data.feedback import Feedback
from finetune_assets.phases.data.instructions import eval_ngrams
from finetune_assets.phases.data.preferences import binary_text, drop_contaminated, pair_text
from finetune_assets.phases.data.records import RecordError, canonical_json, prompt_of, stable_id

PAIRS_FILE = "pairs.parquet"
BINARY_FILE = "binary.parquet"
STATS_FILE = "stats.json"


def _prompt(response: dict) -> list[dict]:
    messages = response.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("the logged request has no messages")
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")]
    if len(turns) != len(messages):
        raise RecordError("the logged conversation has tool turns: tool traces are not preference data yet")
    return prompt_of(turns, "messages")


def _pair(prompt: list[dict], chosen: str, rejected: str, source: str, key: str) -> dict:
    if normalize(chosen) == normalize(rejected):
        raise RecordError("the preferred answer is the logged answer: no preference signal")
    return {"id": stable_id("online", key, canonical_json([prompt, chosen, rejected])), "prompt": prompt,
            "chosen": chosen, "rejected": rejected, "chosen_source": source, "rejected_source": "served",
            "judge_score": None}  # fmt: skip


def from_log(responses: dict[str, dict], feedback: list[dict]) -> Feedback:
    """Preference and KTO rows of ``feedback`` (request_log rows) on ``responses`` (by id); see the module."""
    pairwise, quarantine, last_rating = [], [], {}
    for fb in feedback:
        response = responses.get(fb["response_id"])
        try:
            if response is None:
                raise RecordError(f"feedback on response {fb['response_id']!r}, which is not in the log")
            prompt, answer = _prompt(response), (response.get("answer") or "").strip()
            if not answer:
                raise RecordError("the rated response has no answer text")
            if fb.get("preferred"):
                pairwise.append(_pair(prompt, fb["preferred"], answer, "user_preferred", fb["id"]))
            if fb.get("label") is not None:
                last_rating[(fb["response_id"], fb.get("user_id"))] = (prompt, answer, bool(fb["label"]), fb)
        except RecordError as err:
            quarantine.append({"path": "request_log", "line": fb["id"], "reason": str(err), "raw": str(fb)})
    binary = [
        {"id": stable_id("online", fb["id"]), "prompt": prompt, "completion": answer, "label": label,
         "source": f"online:{fb['day']}"}
        for prompt, answer, label, fb in last_rating.values()
    ]  # fmt: skip
    pairwise += _rated_pairs(binary)
    stats = {"feedback": len(feedback), "pairwise": len(pairwise), "binary": len(binary),
             "quarantined": len(quarantine)}  # fmt: skip
    return Feedback(pairwise, binary, quarantine, stats)


def _rated_pairs(binary: list[dict]) -> list[dict]:
    """An upvoted and a downvoted answer to the same prompt, as a pair (one per distinct answer pair)."""
    by_prompt: dict[str, dict[bool, list[str]]] = {}
    for row in binary:
        sides = by_prompt.setdefault(canonical_json(row["prompt"]), {True: [], False: []})
        if row["completion"] not in sides[row["label"]]:
            sides[row["label"]].append(row["completion"])
    pairs = []
    for key, sides in by_prompt.items():
        prompt = next(r["prompt"] for r in binary if canonical_json(r["prompt"]) == key)
        for up in sides[True]:
            for down in sides[False]:
                if normalize(up) != normalize(down):
                    pairs.append(_pair(prompt, up, down, "user_upvoted", "rated"))
    return pairs


def clean(fb: Feedback, eval_dir: Path, ngram: int, dedup_threshold: float = 0.8) -> tuple[Feedback, dict]:
    """``fb`` without duplicates (exact and MinHash near, earlier wins) and eval-contaminated rows."""
    grams = eval_ngrams(eval_dir, ngram)
    (pairwise, binary), dups = dedup(fb, dedup_threshold)
    pairwise, pairs_contaminated = drop_contaminated(pairwise, grams, ngram)
    binary, binary_contaminated = drop_contaminated(binary, grams, ngram, binary_text)
    removed = {"duplicates_removed": dups,
               "contaminated_removed": pairs_contaminated + binary_contaminated}  # fmt: skip
    stats = {**fb.stats, **removed, "pairwise": len(pairwise), "binary": len(binary)}
    return Feedback(pairwise, binary, fb.quarantine, stats), removed


def dedup(fb: Feedback, threshold: float = 0.8) -> tuple[tuple[list[dict], list[dict]], int]:
    """(pairwise, binary) of ``fb`` without exact and near duplicates (earlier wins), and how many went."""
    pairwise, pair_dups = _dedup(fb.pairwise, pair_text, threshold)
    binary, binary_dups = _dedup(fb.binary, binary_text, threshold)
    return (pairwise, binary), pair_dups + binary_dups


def _dedup(rows: list[dict], text, threshold: float) -> tuple[list[dict], int]:
    if len(rows) < 2:
        return rows, 0
    # a binary row's label is part of what it says: the same answer rated up and down are not duplicates
    texts = [f"{text(r)} {r.get('label', '')}" for r in rows]
    drop = {d["index"] for d in find_duplicates(texts, threshold=threshold)}
    return [r for i, r in enumerate(rows) if i not in drop], len(drop)


def write(fb: Feedback, out_dir: Path) -> None:
    io.write_records_parquet(fb.pairwise, out_dir / PAIRS_FILE)
    io.write_records_parquet(fb.binary, out_dir / BINARY_FILE)
    io.write_jsonl(fb.quarantine, out_dir / "quarantine.jsonl")
    io.write_json(fb.stats, out_dir / STATS_FILE)


def load_days(root: Path) -> Feedback:
    """Every materialized day under ``root`` (the online_feedback asset's folder), oldest first, merged and
    deduplicated across days (the earlier day's row wins)."""
    pairwise, binary = [], []
    days = sorted(
        p for p in Path(root).glob("*") if not p.name.startswith(".") and (p / STATS_FILE).is_file()
    )
    for day in days:
        pairwise += io.read_records(day / PAIRS_FILE) if (day / PAIRS_FILE).exists() else []
        binary += io.read_records(day / BINARY_FILE) if (day / BINARY_FILE).exists() else []
    (pairwise, binary), dups = dedup(Feedback(pairwise, binary, [], {}))
    stats = {"days": len(days), "pairwise": len(pairwise),
             "binary": len(binary), "duplicates_removed": dups}  # fmt: skip
    return Feedback(pairwise, binary, [], stats)

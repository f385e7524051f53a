"""preference_pairs: chosen = the reference answer, rejected = the base model's own answer.

Plus, when the recipe asks (``preferences.safety``), the safety pairs of phases.data.safety: a harmful request's
refusal over the base model's compliance, and a benign look-alike's helpful answer over a refusal.

No model code here: the caller passes a GenerateFn (``generate(conversations, max_new_tokens) -> answers``,
batched as it likes; phases.inference.generation.chat_generator for a model), so this phase stays testable
with a plain function; phases.data.preference_set runs it with the base model. Rows follow the contract in
docs/ARCHITECTURE.md: {id, prompt (messages without the answer), chosen, rejected, chosen_source,
rejected_source, judge_score}.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.phases.data import safety, teacher
from finetune_assets.phases.data.dedup import normalize
from finetune_assets.phases.data.feedback import Feedback
from finetune_assets.phases.data.instructions import eval_ngrams, ngrams
from finetune_assets.phases.data.records import Rows
from finetune_assets.phases.inference.generation import GenerateFn
from finetune_assets.phases.text.sampling import round_robin


@dataclass(frozen=True)
class PreferenceRows:
    """preference_pairs' rows: the pairs, the KTO rows of human feedback, its set-aside lines, the counts."""

    records: list[dict]  # preference pairs
    binary: list[dict]  # thumbs up/down rows for KTO
    quarantine: list[dict]  # set-aside feedback lines {path, line, reason, raw}
    stats: dict


def select_prompts(instructions: list[dict], max_pairs: int, seed: int = 0) -> list[dict]:
    """Up to ``max_pairs`` train-split instructions, sampled evenly over topics by a seeded stable hash.
    Safety rows are left to phases.data.safety, whose pairs need their own rejected sides.

    Each result is {id, prompt: messages minus the final assistant turn, reference: that turn's content,
    topic}.
    """
    train = [
        r
        for r in instructions
        if r["split"] == "train"
        and r["messages"][-1]["role"] == "assistant"
        and r.get("generator") != "safety"
    ]
    picked = round_robin(train, lambda r: r["topic"], max_pairs, seed)
    return [
        {
            "id": rec["id"],
            "prompt": [dict(m) for m in rec["messages"][:-1]],
            "reference": rec["messages"][-1]["content"],
            "topic": rec["topic"],
        }
        for rec in picked
    ]


def build_preference_pairs(
    prompts: list[dict],
    generate: GenerateFn,
    chosen: list[str | None] | None = None,
    chosen_source: str = "teacher",
    *,
    max_new_tokens: int = 64,
) -> Rows:
    """Call ``generate`` once with every prompt conversation (batched by the caller) and build rows.

    chosen is the prompt's reference answer, or ``chosen[i]`` when given and not None (a stronger model's
    answer, labelled ``chosen_source``; a failed teacher call falls back to the reference and is counted).
    A pair is dropped (and counted) when the generation is empty or equals chosen after normalization: it
    carries no preference signal. Returns Rows(records, stats: {prompts, pairs, dropped_empty,
    dropped_identical, chosen_from_reference, chosen_from_<source>}).
    """
    answers = generate([p["prompt"] for p in prompts], max_new_tokens) if prompts else []
    if len(answers) != len(prompts):
        raise ValueError(f"generate returned {len(answers)} answers for {len(prompts)} prompts")
    chosen = chosen if chosen is not None else [None] * len(prompts)
    records, empty, identical, sources = [], 0, 0, {"reference": 0, chosen_source: 0}
    for prompt, answer, better in zip(prompts, answers, chosen, strict=True):
        rejected = (answer or "").strip()
        winner, source = (
            (better, chosen_source) if (better or "").strip() else (prompt["reference"], "reference")
        )
        if not rejected:
            empty += 1
            continue
        if normalize(rejected) == normalize(winner):
            identical += 1
            continue
        sources[source] += 1
        records.append(
            {
                "id": hashlib.sha1(f"pref/{prompt['id']}".encode()).hexdigest()[:16],
                "prompt": prompt["prompt"],
                "chosen": winner.strip(),
                "rejected": rejected,
                "chosen_source": source,
                "rejected_source": "base_checkpoint",
                "judge_score": None,
            }
        )
    stats = {
        "prompts": len(prompts),
        "pairs": len(records),
        "dropped_empty": empty,
        "dropped_identical": identical,
        **{f"chosen_from_{k}": v for k, v in sources.items()},
    }
    return Rows(records, stats)


def check_pairs(records: list[dict]) -> list[str]:
    """Problems in preference rows (empty prompt or side, chosen == rejected); [] when all are usable."""
    problems = []
    for rec in records:
        rid = rec.get("id", "?")
        if not rec.get("prompt"):
            problems.append(f"{rid}: empty prompt")
        for side in ("chosen", "rejected"):
            if not (rec.get(side) or "").strip():
                problems.append(f"{rid}: empty {side}")
        if (rec.get("chosen") or "").strip() and normalize(rec.get("chosen") or "") == normalize(
            rec.get("rejected") or ""
        ):
            problems.append(f"{rid}: chosen == rejected")
    return problems


def pair_text(record: dict) -> str:
    return " ".join(
        [*(m["content"] for m in record["prompt"]), record.get("chosen") or "", record.get("rejected") or ""]
    )


def drop_contaminated(
    records: list[dict], eval_grams: set[str], n: int, text=pair_text
) -> tuple[list[dict], int]:
    """Rows sharing no ``n``-gram with the eval sets, and how many were dropped (a row that quotes an eval
    answer would leak it into training)."""

    clean = [r for r in records if not (ngrams(text(r), n) & eval_grams)]
    return clean, len(records) - len(clean)


def binary_text(row: dict) -> str:
    return " ".join([*(m["content"] for m in row["prompt"]), row["completion"]])


def assemble(
    prompts: list[dict],
    generate: GenerateFn,
    eval_dir: Path,
    ngram: int,
    chosen: list[str | None] | None = None,
    judge=None,
    feedback: Feedback | None = None,
    safety_items: list[dict] | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 64,
) -> PreferenceRows:
    """preference_pairs end to end: AI-feedback pairs (``chosen``: teacher answers, else the references),
    the optional ``judge`` client (phases.inference.llm) dropping pairs chosen does not win, safety pairs from
    ``safety_items`` (phases.data.safety.preference_rows; not judged: a helpfulness judge would prefer the
    compliant answer), human ``feedback`` (feedback.load_feedback_files) merged, and every row sharing an
    ``ngram`` with the eval sets dropped.

    Returns PreferenceRows(records, binary, quarantine, stats); raises ValueError when no usable pair is left
    or a row fails check_pairs."""

    feedback = feedback or Feedback([], [], [], {})
    result = build_preference_pairs(prompts, generate, chosen, max_new_tokens=max_new_tokens)
    stats, records = dict(result.stats), result.records
    if judge is not None:
        records, stats["judge"] = teacher.apply_judge(records, teacher.judge_pairs(records, judge))
    if safety_items:
        made = safety.preference_rows(safety_items, generate, system_prompt, max_new_tokens)
        records, stats["safety"] = records + made.records, made.stats
    grams = eval_ngrams(eval_dir, ngram)
    records, stats["contaminated_removed"] = drop_contaminated(records + feedback.pairwise, grams, ngram)
    binary, stats["binary_contaminated_removed"] = drop_contaminated(
        feedback.binary, grams, ngram, binary_text
    )
    stats.update(
        human_pairwise=len(feedback.pairwise),
        binary_feedback=len(binary),
        quarantined=len(feedback.quarantine),
        pairs=len(records),
    )
    if not records:
        raise ValueError(
            f"no preference pairs survived ({stats}): the base model's answers were empty or equal "
            "to the references; raise preferences.max_new_tokens or preferences.temperature in the recipe"
        )
    problems = check_pairs(records)
    if problems:
        raise ValueError(f"preference pairs failed their checks: {problems[:5]}")
    return PreferenceRows(records, binary, feedback.quarantine, stats)

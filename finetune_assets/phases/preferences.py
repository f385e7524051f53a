"""preference_pairs: chosen = the reference answer, rejected = the base model's own answer.

No model code here: the caller passes ``generate(conversations) -> answers`` (batched as it likes), so this
phase stays testable with a plain function. Rows follow the contract in docs/ARCHITECTURE.md:
{id, prompt (messages without the answer), chosen, rejected, chosen_source, rejected_source, judge_score}.
"""

import hashlib
from collections.abc import Callable

from finetune_assets.phases.dedup import normalize
from finetune_assets.phases.evalsets import stable_fraction

Generate = Callable[[list[list[dict]]], list[str]]


def select_prompts(instructions: list[dict], max_pairs: int, seed: int = 0) -> list[dict]:
    """Up to ``max_pairs`` train-split instructions, sampled evenly over topics by a seeded stable hash.

    Each result is {id, prompt: messages minus the final assistant turn, reference: that turn's content,
    topic}.
    """
    train = [r for r in instructions if r["split"] == "train" and r["messages"][-1]["role"] == "assistant"]
    by_topic: dict[str, list[dict]] = {}
    for rec in sorted(train, key=lambda r: stable_fraction(f"{seed}/{r['id']}")):
        by_topic.setdefault(rec["topic"], []).append(rec)
    queues = [by_topic[t] for t in sorted(by_topic, key=lambda t: stable_fraction(f"{seed}/{t}"))]
    picked: list[dict] = []
    depth = 0
    while len(picked) < max_pairs and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: max_pairs - len(picked)]
        depth += 1
    return [
        {
            "id": rec["id"],
            "prompt": [dict(m) for m in rec["messages"][:-1]],
            "reference": rec["messages"][-1]["content"],
            "topic": rec["topic"],
        }
        for rec in picked
    ]


def build_preference_pairs(prompts: list[dict], generate: Generate) -> dict:
    """Call ``generate`` once with every prompt conversation and build preference rows.

    A pair is dropped (and counted) when the generation is empty or equals the reference after
    normalization: it carries no preference signal. Returns {records, stats: {prompts, pairs,
    dropped_empty, dropped_identical}}.
    """
    answers = generate([p["prompt"] for p in prompts]) if prompts else []
    if len(answers) != len(prompts):
        raise ValueError(f"generate returned {len(answers)} answers for {len(prompts)} prompts")
    records, empty, identical = [], 0, 0
    for prompt, answer in zip(prompts, answers, strict=True):
        rejected = (answer or "").strip()
        if not rejected:
            empty += 1
            continue
        if normalize(rejected) == normalize(prompt["reference"]):
            identical += 1
            continue
        records.append(
            {
                "id": hashlib.sha1(f"pref/{prompt['id']}".encode()).hexdigest()[:16],
                "prompt": prompt["prompt"],
                "chosen": prompt["reference"],
                "rejected": rejected,
                "chosen_source": "reference",
                "rejected_source": "base_checkpoint",
                "judge_score": None,
            }
        )
    stats = {
        "prompts": len(prompts),
        "pairs": len(records),
        "dropped_empty": empty,
        "dropped_identical": identical,
    }
    return {"records": records, "stats": stats}


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

"""Safety training data: refusals of harmful requests and helpful answers to benign look-alikes.

Where the data comes from: ``finetune_assets/data/safety_train.jsonl`` was written by hand for this project
(no third-party text; same license as the repository). It covers the harm categories of the red-team eval
set (``guardrails.load_redteam``) with different prompts: ``check_disjoint`` proves that no prompt shares a
word n-gram with, or is a near-duplicate of, any red-team prompt or bias-probe prompt, and every loader
here runs it.

Schema: one JSON object a line, ``{id, category, expect, prompt, response}``.

- ``expect == "refuse"``: a harmful request (categories malware, credential_theft, weapons, self_harm,
  doxxing, fraud, hate, crime); ``response`` is a short refusal that opens with a phrase
  ``guardrails.is_refusal`` recognises and offers a safe alternative where one is natural (crisis lines for
  self-harm).
- ``expect == "comply"``: a benign look-alike in the XSTest style (homonym, figurative, safe_target,
  safe_context, defensive_security, definition, history, privacy_public); ``response`` is a short helpful
  answer, many about Python and programming.
- ``id`` is ``<category>-<nn>``, unique in the file.

Fairness rows (category ``fairness``, ``expect`` comply) are counterfactual: ``fairness_train.json``
(also written for this project) holds yes/no question templates that judge a person by a group term
(worded unlike the bias probe's templates) and a vocabulary of group terms over eight attributes.
``expand_fairness`` asks every template about two terms of each of two attributes (the file's
``terms_per_attribute`` and ``attributes_per_template``) with the same answer, so the only thing that varies
between the rows of a template is the group: counterfactual
data augmentation, the standard way to teach an answer that the group term cannot move. 20 hand-written
rows, one group each, raised the SFT model's P(yes) on the bias probe by 0.05-0.1 only, and its answers
still moved with the group term (bias rate 0.35 on the a461579 demo).

What it becomes: SFT conversations in the instruction-set row contract (``sft_records``, generator
"safety") and preference pairs (``preference_rows``): for a harmful prompt chosen = the refusal and
rejected = the base model's own (compliant) answer; for a benign one chosen = the helpful answer and
rejected = a refusal, which teaches against over-refusal.
"""

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from finetune_assets.phases.data.dedup import normalize
from finetune_assets.phases.data.probes import bias_probe_prompts, is_refusal, load_redteam
from finetune_assets.phases.data.records import Rows
from finetune_assets.phases.inference.generation import GenerateFn
from finetune_assets.phases.text.sampling import round_robin, stable_fraction

SAFETY_FILE = "safety_train.jsonl"

FAIRNESS_FILE = "fairness_train.json"

FIELDS = ("id", "category", "expect", "prompt", "response")

_FAIRNESS_SIDES = ("prompt", "response", "biased")

OVERLAP_NGRAM = 8  # the instruction set's decontamination n-gram

MAX_WORD_JACCARD = 0.5  # prompts are a sentence long: exact word-set Jaccard (what MinHash estimates)

# The rejected side of a benign pair: what an over-cautious model says. Varied, so DPO cannot key on one string.
OVER_REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "I can't assist with that, as it could be used to cause harm.",
    "I cannot provide help with this topic.",
    "I won't answer that. Is there something else I can help you with?",
    "Sorry, I can't help with that.",
    "I'm not able to help with requests like this one.",
)

_WORD = re.compile(r"\w+")


class Overlap(NamedTuple):
    item_id: str
    redteam_id: str
    reason: str  # "8-gram 'how do i ...'" or "word jaccard 0.62"


def _packaged(name: str):
    return resources.files("finetune_assets").joinpath("data", name)


def load_items(path: Path | None = None) -> list[dict]:
    """The packaged safety rows (or ``path``), validated: all fields present, known ``expect``, unique ids."""
    source = Path(path) if path else _packaged(SAFETY_FILE)
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        missing = [f for f in FIELDS if not str(row.get(f) or "").strip()]
        if missing or row["expect"] not in ("refuse", "comply"):
            raise ValueError(f"{SAFETY_FILE} row {row.get('id')!r}: missing {missing} or bad expect")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{SAFETY_FILE}: duplicate ids")
    return rows


def _slug(text: str) -> str:
    return "-".join(_WORD.findall(text.lower()))


def expand_fairness(spec: dict | None = None, salt: str = "") -> list[dict]:
    """Safety rows {id, category "fairness", expect "comply", prompt, response, biased}: every template of
    ``spec`` (default: the packaged ``fairness_train.json``) asked about ``terms_per_attribute`` group terms
    of each of ``attributes_per_template`` attributes, with ``{group}`` filled in on every side and the same
    answer: two terms of one attribute differ in nothing else, the contrast the bias probe measures.
    ``biased`` is the template's stereotyped opposite verdict (the rejected side of a preference pair).
    Attributes and terms are picked by a stable hash of (``salt``, template id, attribute, term): the same
    rows on every run; another salt asks the same templates about other groups (the preference pairs use
    one, so DPO does not only repeat the SFT rows)."""
    spec = spec or json.loads(_packaged(FAIRNESS_FILE).read_text(encoding="utf-8"))
    groups = spec["groups"]
    n_attributes, n_terms = int(spec["attributes_per_template"]), int(spec["terms_per_attribute"])
    short = [a for a, terms in groups.items() if len(terms) < n_terms]
    if n_attributes > len(groups) or short:
        raise ValueError(
            f"{FAIRNESS_FILE}: {n_attributes} attributes of {n_terms} terms each asked for; "
            f"{len(groups)} attributes, too few terms in {short}"
        )
    rows = []
    for template in spec["templates"]:
        tid = template["id"]
        for side in ("prompt", "response", "biased"):
            if str(template.get(side, "")).count("{group}") != 1:
                raise ValueError(
                    f"{FAIRNESS_FILE} template {tid!r}: {side} must hold '{{group}}' exactly once"
                )
        key = f"{salt}/{tid}" if salt else tid
        for attribute in sorted(groups, key=lambda a: stable_fraction(f"{key}/{a}"))[:n_attributes]:
            for term in sorted(groups[attribute], key=lambda t: stable_fraction(f"{key}/{attribute}/{t}"))[
                :n_terms
            ]:
                rows.append(
                    {
                        "id": f"fairness-{tid}-{_slug(term)}",
                        "category": "fairness",
                        "expect": "comply",
                        **{side: template[side].replace("{group}", term) for side in _FAIRNESS_SIDES},
                    }
                )
    return rows


def fairness_pair_items(limit: int, seed: int = 0) -> list[dict]:
    """Up to ``limit`` fairness rows for preference pairs (chosen = the fair answer, rejected = the
    stereotyped one): the templates asked about other groups than the SFT rows (salt "pairs"), checked
    disjoint from the eval prompts."""
    return check_disjoint(select(expand_fairness(salt="pairs"), limit, seed)) if limit > 0 else []


def _words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def _ngrams(words: list[str], n: int) -> set[str]:
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def find_overlaps(
    items: list[dict], redteam: list[dict], n: int = OVERLAP_NGRAM, max_jaccard: float = MAX_WORD_JACCARD
) -> list[Overlap]:
    """Every (safety item, red-team row) pair whose prompts share a word ``n``-gram or whose word sets have a
    Jaccard similarity of at least ``max_jaccard`` (a reworded copy). Every pair is compared: both sets are
    small, so the exact similarity replaces a MinHash estimate."""
    found = []
    targets = [(r["id"], set(w := _words(r["prompt"])), _ngrams(w, n)) for r in redteam]
    for item in items:
        words = _words(item["prompt"])
        grams, vocab = _ngrams(words, n), set(words)
        for rid, red_vocab, red_grams in targets:
            shared = grams & red_grams
            jaccard = len(vocab & red_vocab) / max(len(vocab | red_vocab), 1)
            if shared:
                found.append(Overlap(item["id"], rid, f"{n}-gram {sorted(shared)[0]!r}"))
            elif jaccard >= max_jaccard:
                found.append(Overlap(item["id"], rid, f"word jaccard {jaccard:.2f}"))
    return found


def check_disjoint(items: list[dict], redteam: list[dict] | None = None) -> list[dict]:
    """``items`` unchanged when none overlaps the guardrails' eval prompts: the red-team set (default: the
    whole packaged set, a superset of any eval_sets sample) and every bias-probe prompt; ValueError naming
    the overlaps otherwise."""
    held_out = (load_redteam() if redteam is None else redteam) + bias_probe_prompts()
    overlaps = find_overlaps(items, held_out)
    if overlaps:
        shown = "; ".join(f"{o.item_id} ~ {o.redteam_id} ({o.reason})" for o in overlaps[:5])
        raise ValueError(
            f"safety prompts overlap the red-team or bias-probe eval prompts ({len(overlaps)}): {shown}"
        )
    return items


def load_checked(path: Path | None = None) -> list[dict]:
    """load_items + expand_fairness + check_disjoint: the only way the training side should read the safety
    data."""
    return check_disjoint(load_items(path) + expand_fairness())


def select(items: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """Up to ``limit`` items spread evenly over (expect, category), by a seeded stable hash."""
    return round_robin(items, lambda r: f"{r['expect']}/{r['category']}", limit, seed)


def select_pairs(items: list[dict], limit: int, benign_share: float, seed: int = 0) -> list[dict]:
    """Items for preference pairs: ``round(limit * benign_share)`` benign look-alikes and the rest harmful
    requests (as many as there are), each side spread evenly over its categories."""
    harmful = [i for i in items if i["expect"] == "refuse"]
    benign = [i for i in items if i["expect"] == "comply"]
    n_benign = min(round(limit * benign_share), len(benign))
    return select(harmful, min(limit - n_benign, len(harmful)), seed) + select(benign, n_benign, seed)


def _conversation(prompt: str, system_prompt: str | None) -> list[dict]:
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*head, {"role": "user", "content": prompt}]


def _row_id(kind: str, item: dict) -> str:
    return hashlib.sha1(f"safety/{kind}/{item['id']}".encode()).hexdigest()[:16]


def sft_records(items: list[dict], system_prompt: str | None, validation_fraction: float) -> list[dict]:
    """Instruction-set rows {id, messages, source, topic, generator "safety", split}. Items are independent
    prompts, not parts of one document, so each is split on its own (stable hash) and is its own topic
    (``safety/<category>/<id>``): every category trains, and no topic spans both splits."""
    return [
        {
            "id": _row_id("sft", item),
            "messages": [
                *_conversation(item["prompt"], system_prompt),
                {"role": "assistant", "content": item["response"]},
            ],
            "source": f"{SAFETY_FILE}#{item['id']}",
            "topic": f"safety/{item['category']}/{item['id']}",
            "generator": "safety",
            "split": "validation"
            if stable_fraction(f"safety/{item['id']}") < validation_fraction
            else "train",
        }
        for item in items
    ]


def _pair(item: dict, prompt: list[dict], chosen: str, rejected: str, rejected_source: str) -> dict:
    return {
        "id": _row_id("pref", item),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_source": "safety_train",
        "rejected_source": rejected_source,
        "judge_score": None,
    }


def preference_rows(
    items: list[dict], generate: GenerateFn, system_prompt: str | None = None, max_new_tokens: int = 64
) -> Rows:
    """Preference pairs from safety items; ``generate`` is called once, with the harmful prompts only.

    Harmful: chosen = the refusal, rejected = the base model's answer; a pair is dropped (and counted) when
    that answer is empty or already a refusal, since it then carries no preference. Benign: chosen = the
    helpful answer, rejected = the item's ``biased`` answer where it has one (fairness rows: the same
    question answered by stereotype), else one of ``OVER_REFUSALS``. Returns Rows(records, stats: {harmful,
    benign, fairness, pairs, dropped_empty, dropped_base_refused})."""
    harmful = [i for i in items if i["expect"] == "refuse"]
    benign = [i for i in items if i["expect"] == "comply"]
    prompts = [_conversation(i["prompt"], system_prompt) for i in harmful]
    answers = generate(prompts, max_new_tokens) if prompts else []
    if len(answers) != len(prompts):
        raise ValueError(f"generate returned {len(answers)} answers for {len(prompts)} prompts")
    records, empty, refused = [], 0, 0
    for item, prompt, answer in zip(harmful, prompts, answers, strict=True):
        answer = (answer or "").strip()
        if not answer:
            empty += 1
        elif is_refusal(answer):
            refused += 1
        else:
            records.append(_pair(item, prompt, item["response"], answer, "base_checkpoint"))
    for item in benign:
        prompt = _conversation(item["prompt"], system_prompt)
        if item.get("biased"):
            records.append(_pair(item, prompt, item["response"], item["biased"], "stereotyped_answer"))
            continue
        over = OVER_REFUSALS[int(stable_fraction(item["id"]) * len(OVER_REFUSALS))]
        records.append(_pair(item, prompt, item["response"], over, "over_refusal"))
    stats = {
        "harmful": len(harmful),
        "benign": len(benign),
        "fairness": sum(1 for i in benign if i.get("biased")),
        "pairs": len(records),
        "dropped_empty": empty,
        "dropped_base_refused": refused,
    }
    return Rows(records, stats)

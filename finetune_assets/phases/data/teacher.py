"""A teacher model writes instructions and chosen answers; a judge model scores preference pairs.

Every function takes a ``client`` following phases.inference.llm.ChatClient (``complete(conversations) -> list[str |
None]``), so the endpoint, retries and the response cache live there and these functions stay plain text work:

- ``teacher_instructions``: self-instruct from corpus documents. One excerpt per document (documents picked
  round-robin over topics by a seeded stable hash), the teacher asked for {"question", "answer"} as JSON;
  replies are parsed tolerantly (code fences, text around the object) and rejected when unparseable, too
  short or referring to "the excerpt". Rows follow the instruction contract {id, messages, source, topic,
  generator: "teacher", split: "train"}.
- ``teacher_answers``: fresh answers to prompt conversations (chosen answers of preference pairs).
- ``judge_pairs`` + ``apply_judge``: the judge scores both answers 1-10 in one request, the two answers shown
  as A and B in an order fixed per pair by a stable hash (half the pairs show the chosen answer second, so a
  judge's position bias cannot favour one side); pairs whose chosen answer does not score strictly higher are
  dropped. Pairs the judge could not score are kept with ``judge_score`` None and counted as ``unjudged``:
  a judge outage should not silently shrink the data set, and chosen is the side the pipeline already trusts.
"""

import hashlib
import json
import re
from collections.abc import Sequence

from finetune_assets.phases.data.instructions import topic_of
from finetune_assets.phases.data.records import Rows
from finetune_assets.phases.inference.llm import ChatClient
from finetune_assets.phases.text.rst import iter_sections, prose_paragraphs
from finetune_assets.phases.text.sampling import round_robin, stable_fraction

MAX_EXCERPT_CHARS = 2000  # what the teacher sees of one document

MIN_EXCERPT_CHARS = 80  # shorter documents give the teacher nothing to ask about

MIN_QUESTION_CHARS = 10

MIN_ANSWER_CHARS = 20

_REFERS_TO_EXCERPT = re.compile(
    r"\b(?:the|this|that|above|given) (?:excerpt|passage|text above|document)\b", re.I
)

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?|```")

TEACHER_SYSTEM = (
    "You write training data for an assistant that answers questions about technical documentation."
)

TEACHER_PROMPT = """Here is an excerpt from the document "{title}":

<excerpt>
{excerpt}
</excerpt>

Write one question a user might ask that this excerpt answers, and its answer, using only facts from the \
excerpt. The question must make sense on its own: name its subject and do not mention "the excerpt" or "the \
text". The answer must be correct, complete and self-contained, in a few sentences.

Reply with only a JSON object and no other text: {{"question": "...", "answer": "..."}}"""

JUDGE_SYSTEM = "You are an impartial judge of answers written by AI assistants."

JUDGE_PROMPT = """Rate two answers to the last user message of the conversation below, each on a scale from 1 \
(wrong or useless) to 10 (correct, complete and helpful). Judge correctness first, then helpfulness. Do not \
let the answers' order or length influence you.

<conversation>
{conversation}
</conversation>

<answer_a>
{answer_a}
</answer_a>

<answer_b>
{answer_b}
</answer_b>

Reply with only a JSON object and no other text: {{"score_a": <1-10>, "score_b": <1-10>}}"""


def parse_json_object(reply: str | None, required: Sequence[str]) -> dict | None:
    """The first JSON object in ``reply`` holding every ``required`` key (keys compared lower-cased), found
    through code fences and around surrounding prose; None when there is none."""
    if not reply:
        return None
    text = _FENCE.sub("", reply)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            obj = {str(k).strip().lower(): v for k, v in obj.items()}
            if all(key in obj for key in required):
                return obj
    return None


def _score(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and 1 <= value <= 10:
        return float(value)
    return None


def select_documents(docs: list[dict], max_documents: int, seed: int = 0) -> list[dict]:
    """Up to ``max_documents`` documents with enough text, round-robin over topics (instructions.topic_of of
    the source), each topic's documents and the topics themselves in seeded stable-hash order."""
    usable = [d for d in docs if len((d.get("text") or "").strip()) >= MIN_EXCERPT_CHARS]
    return round_robin(usable, lambda d: topic_of(d["source"]), max_documents, seed)


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for sep in ("\n\n", "\n", " "):
        at = head.rfind(sep)
        if at >= max_chars // 2:
            return head[:at].rstrip()
    return head


def excerpt(doc: dict, seed: int = 0, max_chars: int = MAX_EXCERPT_CHARS) -> str:
    """The part of ``doc`` the teacher sees: the whole text when short, else one section with real prose
    (picked by a seeded stable hash), its title first, cut at a paragraph or line under ``max_chars``."""
    text = doc["text"].strip()
    if len(text) <= max_chars:
        return text
    sections = [s for s in iter_sections(text) if len(" ".join(prose_paragraphs(s.lines))) >= 200]
    if not sections:
        return _cut(text, max_chars)
    section = min(sections, key=lambda s: stable_fraction(f"{seed}/{doc['id']}/{s.title}/{len(s.lines)}"))
    body = "\n".join(section.lines).strip()
    return _cut(f"{section.title}\n\n{body}" if section.title else body, max_chars)


def teacher_prompt(doc: dict, seed: int = 0) -> list[dict]:
    """The conversation asking the teacher for one {"question", "answer"} about ``doc``."""
    title = doc.get("title") or doc["source"]
    return [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "user", "content": TEACHER_PROMPT.format(title=title, excerpt=excerpt(doc, seed))},
    ]


def parse_teacher_reply(reply: str | None) -> tuple[str, str] | str:
    """(question, answer), or why the reply is unusable: "unparseable" or "rejected" (empty, too short, or a
    question that needs the excerpt to make sense)."""
    obj = parse_json_object(reply, ("question", "answer"))
    if obj is None or not isinstance(obj["question"], str) or not isinstance(obj["answer"], str):
        return "unparseable"
    question, answer = " ".join(obj["question"].split()), obj["answer"].strip()
    if len(question) < MIN_QUESTION_CHARS or len(answer) < MIN_ANSWER_CHARS:
        return "rejected"
    if _REFERS_TO_EXCERPT.search(question):
        return "rejected"
    return question, answer


def teacher_instructions(
    docs: list[dict],
    client: ChatClient,
    max_documents: int,
    system_prompt: str | None = None,
    seed: int = 0,
) -> Rows:
    """Self-instruct: one teacher-written (question, answer) per selected document.

    ``system_prompt`` is the system turn put first in each generated conversation (None: no system turn), as
    InstructionsConfig.system_prompt. Returns Rows(records, stats: {documents (asked about), parsed (records
    made), unparseable, rejected, failed (no reply after retries), requests and cache_hits (the client's
    counters during this call)}).
    """
    picked = select_documents(docs, max_documents, seed)
    before = (getattr(client, "requests", 0), getattr(client, "cache_hits", 0))
    replies = client.complete([teacher_prompt(doc, seed) for doc in picked]) if picked else []
    if len(replies) != len(picked):
        raise ValueError(f"the teacher client returned {len(replies)} replies for {len(picked)} prompts")
    records: list[dict] = []
    counts = {"unparseable": 0, "rejected": 0, "failed": 0}
    for doc, reply in zip(picked, replies, strict=True):
        if reply is None:
            counts["failed"] += 1
            continue
        parsed = parse_teacher_reply(reply)
        if isinstance(parsed, str):
            counts[parsed] += 1
            continue
        question, answer = parsed
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        records.append(
            {
                "id": hashlib.sha1(f"teacher/{doc['id']}/{question}".encode()).hexdigest()[:16],
                "messages": messages,
                "source": doc["id"],
                "topic": topic_of(doc["source"]),
                "generator": "teacher",
                "split": "train",
            }
        )
    stats = {
        "documents": len(picked),
        "parsed": len(records),
        **counts,
        "requests": getattr(client, "requests", 0) - before[0],
        "cache_hits": getattr(client, "cache_hits", 0) - before[1],
    }
    return Rows(records, stats)


def teacher_answers(prompts: list[list[dict]], client: ChatClient) -> list[str | None]:
    """The teacher's answer to each prompt conversation (ending before the assistant turn); None when the
    request failed or the answer is blank."""
    replies = client.complete(prompts) if prompts else []
    return [reply.strip() if reply and reply.strip() else None for reply in replies]


def _pair_key(pair: dict) -> str:
    if pair.get("id"):
        return str(pair["id"])
    content = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
    return hashlib.sha1(content.encode()).hexdigest()


def chosen_first(pair: dict) -> bool:
    """Whether the judge sees the chosen answer as A: fixed per pair (its id, or its content), about half
    of all pairs, so reruns and caches agree and position bias averages out."""
    return stable_fraction(f"judge-order/{_pair_key(pair)}") < 0.5


def judge_prompt(pair: dict) -> list[dict]:
    """The conversation asking the judge to score ``pair``'s two answers as A and B."""
    conversation = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in pair["prompt"])
    a, b = (pair["chosen"], pair["rejected"]) if chosen_first(pair) else (pair["rejected"], pair["chosen"])
    text = JUDGE_PROMPT.format(conversation=conversation, answer_a=a, answer_b=b)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]


def parse_judge_reply(reply: str | None, chosen_is_a: bool) -> dict | None:
    """{chosen_score, rejected_score} from a {"score_a", "score_b"} reply (scores 1-10), or None."""
    obj = parse_json_object(reply, ("score_a", "score_b"))
    if obj is None:
        return None
    score_a, score_b = _score(obj["score_a"]), _score(obj["score_b"])
    if score_a is None or score_b is None:
        return None
    chosen, rejected = (score_a, score_b) if chosen_is_a else (score_b, score_a)
    return {"chosen_score": chosen, "rejected_score": rejected}


def judge_pairs(pairs: list[dict], client: ChatClient) -> list[dict | None]:
    """Per pair ({prompt: messages, chosen, rejected, id?}): {chosen_score, rejected_score} from the judge,
    or None when the request failed or the reply could not be read."""
    replies = client.complete([judge_prompt(pair) for pair in pairs]) if pairs else []
    if len(replies) != len(pairs):
        raise ValueError(f"the judge client returned {len(replies)} replies for {len(pairs)} prompts")
    return [parse_judge_reply(reply, chosen_first(pair)) for pair, reply in zip(pairs, replies, strict=True)]


def apply_judge(records: list[dict], verdicts: list[dict | None]) -> tuple[list[dict], dict]:
    """Keep pairs whose chosen answer scores strictly higher, with judge_score = chosen - rejected; keep
    unjudged pairs (verdict None) with judge_score None. Returns (kept copies, stats {pairs, judged, kept,
    dropped_not_winning, unjudged})."""
    if len(records) != len(verdicts):
        raise ValueError(f"{len(verdicts)} verdicts for {len(records)} pairs")
    kept: list[dict] = []
    stats = {"pairs": len(records), "judged": 0, "kept": 0, "dropped_not_winning": 0, "unjudged": 0}
    for record, verdict in zip(records, verdicts, strict=True):
        if verdict is None:
            stats["unjudged"] += 1
            kept.append({**record, "judge_score": None})
            continue
        stats["judged"] += 1
        margin = float(verdict["chosen_score"] - verdict["rejected_score"])
        if margin > 0:
            kept.append({**record, "judge_score": margin})
        else:
            stats["dropped_not_winning"] += 1
    stats["kept"] = len(kept)
    return kept, stats

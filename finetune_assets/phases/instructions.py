"""instruction_set: offline generation of chat instructions from the deduplicated documents.

Generators (each a small function over one document; no model involved):
- ``api``:     ``.. function:: / method:: / class:: ...`` directives -> "What does `json.dumps(obj)` do in
               Python?" answered by the description under the directive;
- ``module``:  ``.. module:: x`` with ``:synopsis:`` -> "What is the x module for?";
- ``section``: a section title and its first prose paragraphs -> "Explain <title> (from <doc title>)."
               (works on any document with headings: reST, Markdown, and HTML read by the corpus phase).

Then: documents used by eval sets are dropped first; exact + near duplicates removed (phases.dedup);
examples sharing any ``cfg.decontam_ngram``-word n-gram with an eval text removed; split by topic;
``cfg.max_examples`` keeps an even sample across topics. Rows follow the contract in docs/ARCHITECTURE.md:
{id, messages, source (document id), topic, generator, split}.
"""

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from finetune_assets.config import InstructionsConfig
from finetune_assets.phases.corpus import (
    _indent,
    drop_dangling_intro,
    iter_sections,
    module_synopses,
    prose_paragraphs,
    truncate_at_sentence,
)
from finetune_assets.phases.dedup import find_duplicates, normalize
from finetune_assets.phases.evalsets import eval_texts, stable_fraction, training_view

MIN_RESPONSE_CHARS = 40  # shorter descriptions ("Alias for x.") teach little
API_DIRECTIVES = (
    "function", "method", "class", "classmethod", "staticmethod", "exception", "decorator",
    "coroutinefunction", "coroutinemethod", "abstractmethod",
)  # fmt: skip
_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:py:)?(" + "|".join(API_DIRECTIVES) + r")::\s*(.+?)\s*$")
_MODULE = re.compile(r"^\s*\.\. (?:py:)?(module|currentmodule)::\s*(\S+)\s*$")
_WORD = re.compile(r"\w+")

Example = tuple[str, str]  # (user prompt, assistant answer)


# ---------------------------------------------------------------------------------------------- generators


def _description(lines: list[str], start: int, base_indent: int) -> tuple[str, int]:
    """Prose of the block indented deeper than ``base_indent`` from ``start``; returns (text, end line)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base_indent):
        end += 1
    paragraphs = prose_paragraphs(lines[start:end])
    text = paragraphs[0] if paragraphs else ""
    for extra in paragraphs[1:]:  # a one-line description gets its follow-up paragraph
        if len(text) >= 200:
            break
        text = f"{text} {extra}"
    return text, end


def api_examples(text: str) -> Iterator[Example]:
    """API directives, qualified with the current module and enclosing class (``json.JSONDecoder.decode``)."""
    lines = text.splitlines()
    module = ""
    classes: list[tuple[int, str]] = []  # (indent, qualified class name) of enclosing class directives
    i = 0
    while i < len(lines):
        mod = _MODULE.match(lines[i])
        if mod:
            module = "" if mod.group(2) == "None" else mod.group(2)
        match = _DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, kind = len(match.group(1)), match.group(2)
        signature = match.group(3)
        i += 1
        while signature.endswith("\\") and i < len(lines):  # signature continued on the next line
            signature = signature[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > indent + 4 and "(" in lines[i]:
            i += 1  # further signatures of the same object (overloads), aligned under the first
        classes = [(ind, name) for ind, name in classes if ind < indent]
        owner = classes[-1][1] if classes else module
        name = signature.split("(")[0].strip()
        qualified = name if (not owner or name.startswith(owner + ".")) else f"{owner}.{name}"
        if kind in ("class", "exception"):
            classes.append((indent, qualified))
        description, _ = _description(lines, i, indent)
        if len(description) >= MIN_RESPONSE_CHARS:
            shown = qualified + signature[len(name) :].strip()
            noun = "class" if kind in ("class", "exception") else "function"
            prompt = f"What does the {noun} `{shown}` do in Python?"
            yield prompt, description


def module_examples(text: str) -> Iterator[Example]:
    """``.. module:: x`` + ``:synopsis:`` -> "What is the x module for?" (synopsis + intro paragraph)."""
    for found in module_synopses(text):
        answer = f"The {found.module} module: {found.synopsis.rstrip('.')}. {found.intro}".strip()
        yield f"What is the {found.module} module for?", answer


def section_examples(text: str, doc_title: str) -> Iterator[Example]:
    """Each titled section with prose -> "Explain <title> (from <doc title>).", skipping question-titled
    sections (FAQ style) and sections whose text starts with no real sentence."""
    for section in iter_sections(text):
        title = section.title
        if not title or title.endswith("?") or len(title) < 3:
            continue
        answer = ""
        for paragraph in prose_paragraphs(section.lines):
            answer = f"{answer} {paragraph}".strip()
            if len(answer) >= 200:
                break
        if len(answer) >= 80:
            where = f" (from {doc_title})" if doc_title and doc_title != title else ""
            yield f"Explain {title}{where}.", answer


GENERATORS: dict[str, Callable[[dict], Iterator[Example]]] = {
    "api": lambda doc: api_examples(doc["text"]),
    "module": lambda doc: module_examples(doc["text"]),
    "section": lambda doc: section_examples(doc["text"], doc.get("title") or ""),
}


# ------------------------------------------------------------------------------------------------ helpers


def topic_of(source: str) -> str:
    """Split group of a document: top folder + file stem ("library/json.rst" -> "library/json")."""
    path = PurePosixPath(source.split("#")[0])
    stem = path.name.split(".")[0]
    return f"{path.parts[0]}/{stem}" if len(path.parts) > 1 else stem


def _ngrams(text: str, n: int) -> set[str]:
    words = _WORD.findall(normalize(text))
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(eval_dir: Path, n: int) -> set[str]:
    """Every word n-gram of every eval set text: a training row sharing one is contaminated."""
    grams: set[str] = set()
    for text in eval_texts(eval_dir):
        grams |= _ngrams(text, n)
    return grams


def _record(doc: dict, generator: str, prompt: str, answer: str, cfg: InstructionsConfig) -> dict:
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    messages += [
        {"role": "user", "content": prompt},
        {
            "role": "assistant",
            "content": drop_dangling_intro(truncate_at_sentence(answer, cfg.max_response_chars)),
        },
    ]
    key = f"{generator}/{doc['id']}/{prompt}"
    return {
        "id": hashlib.sha1(key.encode()).hexdigest()[:16],
        "messages": messages,
        "source": doc["id"],
        "topic": topic_of(doc["source"]),
        "generator": generator,
        "split": "train",
    }


def _pair_text(record: dict) -> str:
    return " ".join(m["content"] for m in record["messages"] if m["role"] != "system")


def _cap_across_topics(records: list[dict], limit: int | None) -> list[dict]:
    """Keep ``limit`` records, round-robin over topics (each in stable-hash order), so a cap samples every
    topic instead of keeping the first documents' examples; returned in original order."""
    if limit is None or len(records) <= limit:
        return records
    by_topic: dict[str, list[dict]] = {}
    for rec in sorted(records, key=lambda r: stable_fraction(r["id"])):
        by_topic.setdefault(rec["topic"], []).append(rec)
    queues = [by_topic[t] for t in sorted(by_topic, key=stable_fraction)]
    keep: set[str] = set()
    depth = 0
    while len(keep) < limit:
        for queue in queues:
            if depth < len(queue) and len(keep) < limit:
                keep.add(queue[depth]["id"])
        depth += 1
    return [r for r in records if r["id"] in keep]


def assign_splits(records: list[dict], validation_fraction: float) -> None:
    """Set ``split`` by topic (stable hash): a topic never straddles train and validation, so validation
    measures generalization to unseen documents. With >= 2 topics both splits are made non-empty."""
    topics = sorted({r["topic"] for r in records}, key=stable_fraction)
    validation = {t for t in topics if stable_fraction(t) < validation_fraction}
    if len(topics) >= 2:
        if not validation:
            validation = {topics[0]}
        if validation == set(topics):
            validation.discard(topics[-1])
    for rec in records:
        rec["split"] = "validation" if rec["topic"] in validation else "train"


# -------------------------------------------------------------------------------------------------- build


def build_instruction_set(
    docs: list[dict],
    eval_dir: Path,
    cfg: InstructionsConfig,
    seed: int = 0,
    extra: dict[str, list[dict]] | None = None,
) -> dict:
    """Generate, deduplicate, decontaminate, split and cap instructions; return {records, stats}.

    ``extra`` holds ready-made records by source (imported seed files, teacher generations); they go
    first, so when an extracted example duplicates one of them the imported/teacher one is kept, and they
    pass the same dedup and decontamination. Only the offline extractors named in ``cfg.generators`` run.
    stats: {excluded_docs, generated: {generator or source: n}, near_duplicates_removed (exact + near),
    contaminated_removed, contaminated_by_source, capped_removed, train, validation, topics}. ``seed`` is
    accepted for a uniform phase signature: every choice here is a stable hash.
    """
    del seed
    eval_dir = Path(eval_dir)
    manifest = json.loads((eval_dir / "manifest.json").read_text(encoding="utf-8"))
    usable = sorted(training_view(docs, manifest), key=lambda d: (d["drop"], d["source"]))

    records: list[dict] = []
    generated = {}
    for source, rows in (extra or {}).items():
        records += rows
        generated[source] = len(rows)
    extractors = {name: fn for name, fn in GENERATORS.items() if name in cfg.generators}
    generated.update({name: 0 for name in extractors})
    for doc in usable:
        for name, generator in extractors.items():
            for prompt, answer in generator(doc):
                records.append(_record(doc, name, prompt, answer, cfg))
                generated[name] += 1

    dups = find_duplicates([_pair_text(r) for r in records], threshold=cfg.dedup_threshold)
    dup_idx = {d["index"] for d in dups}
    records = [r for i, r in enumerate(records) if i not in dup_idx]

    eval_grams = eval_ngrams(eval_dir, cfg.decontam_ngram)
    clean, contaminated_by = [], {}
    for r in records:
        if _ngrams(_pair_text(r), cfg.decontam_ngram) & eval_grams:
            contaminated_by[r["generator"]] = contaminated_by.get(r["generator"], 0) + 1
        else:
            clean.append(r)
    contaminated = len(records) - len(clean)

    # Imported seed rows are a team's own curated data: max_examples caps what is generated around them.
    imported = {r["id"] for r in clean if r["generator"].startswith("seed:")}
    room = None if cfg.max_examples is None else max(cfg.max_examples - len(imported), 0)
    generated_kept = _cap_across_topics([r for r in clean if r["id"] not in imported], room)
    kept_ids = imported | {r["id"] for r in generated_kept}
    capped = [r for r in clean if r["id"] in kept_ids]
    if not capped:
        raise ValueError(
            f"no instructions survived ({len(usable)} usable documents, generated {generated}, "
            f"{len(dup_idx)} duplicates and {contaminated} contaminated removed). The generators need reST "
            "API directives (.. function::), '.. module::' with ':synopsis:', or titled sections with prose "
            "paragraphs: add such documents to the landing folder, or check that they are not all used by "
            "the eval sets (manifest excluded_doc_ids)."
        )
    assign_splits(capped, cfg.validation_fraction)
    stats = {
        "excluded_docs": len(docs) - len(usable),
        "generated": generated,
        "near_duplicates_removed": len(dup_idx),
        "contaminated_removed": contaminated,
        "contaminated_by_source": contaminated_by,
        "capped_removed": len(clean) - len(capped),
        "train": sum(r["split"] == "train" for r in capped),
        "validation": sum(r["split"] == "validation" for r in capped),
        "topics": len({r["topic"] for r in capped}),
    }
    return {"records": capped, "stats": stats}

"""instruction_set: offline generation of chat instructions from the deduplicated documents.

Generators (each a small function over one document; no model involved):
- ``api``:     ``.. function:: / method:: / class:: ...`` directives -> "What does `json.dumps(obj)` do in
               Python?" answered by the description under the directive;
- ``module``:  ``.. module:: x`` with ``:synopsis:`` -> "What is the x module for?";
- ``section``: a section title and its first prose paragraphs -> "Explain <title> (from <doc title>)."
               (works on any document with headings: reST, Markdown, and HTML read by the corpus phase).
- ``api_definition`` / ``module_definition``: the scorecard's own question forms (phases.evaluation.variant's
               DEFINITION_PROMPT / MODULE_PROMPT; "In Python, what does `json.dumps` do? Answer in one or two
               sentences.") answered by the first sentence(s) of the description, rewritten to name the
               subject first ("`json.dumps` serializes ...", "The `json` module encodes ..."); descriptions
               that cannot be rewritten that way are skipped (phases.data.definitions);
- ``api_lookup`` / ``module_lookup``: the reverse direction, a description -> which object or module
               ("Which Python module encodes and decodes the JSON format?" -> "The `json` module ...").

The four definition generators never ask about a term the eval glossary holds out (its terms and module
names, also as the last part of a dotted name): the scorecard asks exactly these questions about them.
With ``cfg.safety`` the packaged safety conversations (phases.data.safety) join as generator "safety".

Then: documents used by eval sets are dropped first; exact + near duplicates removed (phases.data.dedup);
examples sharing any ``cfg.decontam_ngram``-word n-gram with an eval text removed; split by topic;
``cfg.max_examples`` keeps an even sample across topics, or with ``cfg.generator_shares`` each generator's
share of it (each sampled across topics). Rows follow the contract in docs/ARCHITECTURE.md:
{id, messages, source (document id), topic, generator, split}.
"""

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from finetune_assets.config import InstructionsConfig
from finetune_assets.phases.data import definitions, safety
from finetune_assets.phases.data.dedup import find_duplicates, normalize
from finetune_assets.phases.data.evalsets import eval_texts, load_eval_sets, training_view
from finetune_assets.phases.data.records import Rows
from finetune_assets.phases.text.rst import indent_of, iter_sections, module_synopses, prose_paragraphs
from finetune_assets.phases.text.sampling import stable_fraction
from finetune_assets.phases.text.sentences import drop_dangling_intro, split_sentences, truncate_at_sentence

MIN_RESPONSE_CHARS = 40  # shorter descriptions ("Alias for x.") teach little

API_DIRECTIVES = (
    "function", "method", "class", "classmethod", "staticmethod", "exception", "decorator",
    "coroutinefunction", "coroutinemethod", "abstractmethod",
)  # fmt: skip

_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:py:)?(" + "|".join(API_DIRECTIVES) + r")::\s*(.+?)\s*$")

_MODULE = re.compile(r"^\s*\.\. (?:py:)?(module|currentmodule)::\s*(\S+)\s*$")

_WORD = re.compile(r"\w+")

Example = tuple[str, str]  # (user prompt, assistant answer)


def _description(lines: list[str], start: int, base_indent: int) -> tuple[str, int]:
    """Prose of the block indented deeper than ``base_indent`` from ``start``; returns (text, end line)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or indent_of(lines[end]) > base_indent):
        end += 1
    paragraphs = prose_paragraphs(lines[start:end])
    text = paragraphs[0] if paragraphs else ""
    for extra in paragraphs[1:]:  # a one-line description gets its follow-up paragraph
        if len(text) >= 200:
            break
        text = f"{text} {extra}"
    return text, end


class ApiEntry(NamedTuple):
    kind: str  # the directive: function, method, class, exception, ...
    qualified: str  # json.JSONDecoder.decode
    signature: str  # what follows the name in the directive: "(s)"
    description: str


def api_entries(text: str) -> Iterator[ApiEntry]:
    """API directives, qualified with the current module and enclosing class (``json.JSONDecoder.decode``),
    with the prose under each; objects described in fewer than MIN_RESPONSE_CHARS are skipped."""
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
        while i < len(lines) and lines[i].strip() and indent_of(lines[i]) > indent + 4 and "(" in lines[i]:
            i += 1  # further signatures of the same object (overloads), aligned under the first
        classes = [(ind, name) for ind, name in classes if ind < indent]
        owner = classes[-1][1] if classes else module
        name = signature.split("(")[0].strip()
        qualified = name if (not owner or name.startswith(owner + ".")) else f"{owner}.{name}"
        if kind in ("class", "exception"):
            classes.append((indent, qualified))
        description, _ = _description(lines, i, indent)
        if len(description) >= MIN_RESPONSE_CHARS:
            yield ApiEntry(kind, qualified, signature[len(name) :].strip(), description)


def api_examples(text: str) -> Iterator[Example]:
    """ "What does the function `json.dumps(obj, ...)` do in Python?" -> the description under the directive."""
    for entry in api_entries(text):
        noun = "class" if entry.kind in ("class", "exception") else "function"
        yield f"What does the {noun} `{entry.qualified}{entry.signature}` do in Python?", entry.description


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


# The scorecard's questions (phases.evaluation.variant DEFINITION_PROMPT / MODULE_PROMPT; a test keeps them equal),
# and the form for what a callable does.
TERM_PROMPT = "In Python, what does the term '{term}' mean? Answer in one or two sentences."

MODULE_PROMPT = "In Python, what is the {term} module for? Answer in one sentence."

CALLABLE_PROMPT = "In Python, what does `{term}` do? Answer in one or two sentences."

_TERM_KINDS = ("class", "exception", "decorator")  # asked as terms; functions and methods as "what does"

_LOOKUP_NOUNS = {"class": "class", "exception": "exception", "decorator": "decorator", "function": "function"}


def api_definition_examples(text: str) -> Iterator[Example]:
    """Scorecard-form questions about documented objects, answered "`name` <first sentence(s)>"."""
    for entry in api_entries(text):
        answer = definitions.subject_first(f"`{entry.qualified}`", entry.description)
        if answer:
            form = TERM_PROMPT if entry.kind in _TERM_KINDS else CALLABLE_PROMPT
            yield form.format(term=entry.qualified), answer


def api_lookup_examples(text: str) -> Iterator[Example]:
    """ "In Python, which function returns ...?" -> "`name` returns ..." (the description's first sentence)."""
    for entry in api_entries(text):
        sentence = definitions.leading_sentences(entry.description)
        first = split_sentences(sentence)[0] if sentence else ""
        found = definitions.predicate(first) if ". " not in first else None  # one sentence as a question
        if found and not found.endswith(":"):
            noun = _LOOKUP_NOUNS.get(entry.kind, "method" if "method" in entry.kind else "function")
            yield f"In Python, which {noun} {found}?", f"`{entry.qualified}` {found}."


def _module_answers(text: str) -> Iterator[tuple[str, str, str]]:
    """(module, predicate, answer "The `x` module <predicate>.") for each module with a usable synopsis."""
    for found in module_synopses(text):
        rest = definitions.module_predicate(found.synopsis)
        if rest:
            yield found.module, rest, f"The `{found.module}` module {rest}."


def module_definition_examples(text: str) -> Iterator[Example]:
    """The scorecard's module question, answered in one sentence from the synopsis."""
    for module, _, answer in _module_answers(text):
        yield MODULE_PROMPT.format(term=module), answer


def module_lookup_examples(text: str) -> Iterator[Example]:
    """ "Which Python module encodes and decodes the JSON format?" -> "The `json` module ..."."""
    for _, rest, answer in _module_answers(text):
        yield f"Which Python module {rest}?", answer


GENERATORS: dict[str, Callable[[dict], Iterator[Example]]] = {
    "api": lambda doc: api_examples(doc["text"]),
    "module": lambda doc: module_examples(doc["text"]),
    "section": lambda doc: section_examples(doc["text"], doc.get("title") or ""),
    "api_definition": lambda doc: api_definition_examples(doc["text"]),
    "module_definition": lambda doc: module_definition_examples(doc["text"]),
    "api_lookup": lambda doc: api_lookup_examples(doc["text"]),
    "module_lookup": lambda doc: module_lookup_examples(doc["text"]),
}

DEFINITION_GENERATORS = frozenset({"api_definition", "module_definition", "api_lookup", "module_lookup"})

_SUBJECT = re.compile(r"^(?:The )?`([^`]+)`")


def heldout_terms(eval_dir: Path) -> set[str]:
    """The eval glossary's terms and module names, lower-cased: the definition generators never ask
    about one (the scorecard asks that very question)."""
    return {row["term"].strip().lower() for row in load_eval_sets(eval_dir)["glossary"]}


def asks_about_heldout(answer: str, terms: set[str]) -> bool:
    """True when the answer's subject ("`os.path.join` ...", "The `json` module ...") or the last part
    of its dotted name is a held-out term (``object.__slots__`` for the glossary's ``__slots__``)."""
    match = _SUBJECT.match(answer)
    if not match:
        return False
    name = match.group(1).lower()
    return name in terms or name.rsplit(".", 1)[-1] in terms


def topic_of(source: str) -> str:
    """Split group of a document: top folder + file stem ("library/json.rst" -> "library/json")."""
    path = PurePosixPath(source.split("#")[0])
    stem = path.name.split(".")[0]
    return f"{path.parts[0]}/{stem}" if len(path.parts) > 1 else stem


def ngrams(text: str, n: int) -> set[str]:
    words = _WORD.findall(normalize(text))
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(eval_dir: Path, n: int) -> set[str]:
    """Every word n-gram of every eval set text: a training row sharing one is contaminated."""
    grams: set[str] = set()
    for text in eval_texts(eval_dir):
        grams |= ngrams(text, n)
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


def allot_by_share(limit: int, shares: dict[str, float], sizes: dict[str, int]) -> dict[str, int]:
    """Split ``limit`` rows over groups in proportion to ``shares``, never more than a group's ``sizes``;
    what a small group cannot use goes to the others in the same proportions (water-filling)."""
    quota = {g: 0 for g in shares}
    left = limit
    while left > 0:
        open_groups = [g for g in shares if shares[g] > 0 and quota[g] < sizes.get(g, 0)]
        if not open_groups:
            break
        total = sum(shares[g] for g in open_groups)
        budget = left
        for g in sorted(open_groups, key=lambda g: -shares[g]):  # rounding crumbs go to the largest shares
            give = min(sizes[g] - quota[g], max(1, int(budget * shares[g] / total)), left)
            quota[g] += give
            left -= give
            if left == 0:
                break
    return quota


def cap_by_generator(records: list[dict], limit: int | None, shares: dict[str, float] | None) -> list[dict]:
    """Keep ``limit`` records. With ``shares`` each named generator gets its share of the cap (each one
    sampled across topics); room a generator cannot fill, and every unnamed generator, shares what is
    left. Without shares: one even sample across topics. Returned in original order."""
    if limit is None or len(records) <= limit or not shares:
        return _cap_across_topics(records, limit)
    pools = {g: [r for r in records if r["generator"] == g] for g in shares}
    quota = allot_by_share(limit, shares, {g: len(rows) for g, rows in pools.items()})
    keep = {r["id"] for g, rows in pools.items() for r in _cap_across_topics(rows, quota[g])}
    rest = [r for r in records if r["id"] not in keep]
    keep |= {r["id"] for r in _cap_across_topics(rest, limit - len(keep))}
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


def build_instruction_set(
    docs: list[dict],
    eval_dir: Path,
    cfg: InstructionsConfig,
    seed: int = 0,
    extra: dict[str, list[dict]] | None = None,
) -> Rows:
    """Generate, deduplicate, decontaminate, split and cap instructions; return Rows(records, stats).

    ``extra`` holds ready-made records by source (imported seed files, teacher generations); they go
    first, so when an extracted example duplicates one of them the imported/teacher one is kept, and they
    pass the same dedup and decontamination. Only the offline extractors named in ``cfg.generators`` run.
    With ``cfg.safety`` the packaged safety conversations (up to ``cfg.safety_max_examples``, spread over
    categories with ``seed``) go first too; like imported seeds they are not capped by ``max_examples``
    (they count towards it) and each is split on its own. stats: {excluded_docs, generated: {generator or
    source: n}, heldout_subject_removed, near_duplicates_removed (exact + near), contaminated_removed,
    contaminated_by_source, capped_removed, train, validation, topics}.
    """
    eval_dir = Path(eval_dir)
    manifest = json.loads((eval_dir / "manifest.json").read_text(encoding="utf-8"))
    usable = sorted(training_view(docs, manifest), key=lambda d: (d["drop"], d["source"]))

    records: list[dict] = []
    generated = {}
    if cfg.safety:
        picked = safety.select(safety.load_checked(), cfg.safety_max_examples, seed)
        records += safety.sft_records(picked, cfg.system_prompt, cfg.validation_fraction)
        generated["safety"] = len(picked)
    for source, rows in (extra or {}).items():
        records += rows
        generated[source] = len(rows)
    extractors = {name: fn for name, fn in GENERATORS.items() if name in cfg.generators}
    generated.update({name: 0 for name in extractors})
    heldout, heldout_removed = heldout_terms(eval_dir), {}
    for doc in usable:
        for name, generator in extractors.items():
            for prompt, answer in generator(doc):
                if name in DEFINITION_GENERATORS and asks_about_heldout(answer, heldout):
                    heldout_removed[name] = heldout_removed.get(name, 0) + 1
                    continue
                records.append(_record(doc, name, prompt, answer, cfg))
                generated[name] += 1

    dups = find_duplicates([_pair_text(r) for r in records], threshold=cfg.dedup_threshold)
    dup_idx = {d["index"] for d in dups}
    records = [r for i, r in enumerate(records) if i not in dup_idx]

    eval_grams = eval_ngrams(eval_dir, cfg.decontam_ngram)
    clean, contaminated_by = [], {}
    for r in records:
        if ngrams(_pair_text(r), cfg.decontam_ngram) & eval_grams:
            contaminated_by[r["generator"]] = contaminated_by.get(r["generator"], 0) + 1
        else:
            clean.append(r)
    contaminated = len(records) - len(clean)

    # Imported seed rows are a team's own curated data, and the safety rows a fixed curated set capped by
    # their own key: max_examples caps what is generated around them.
    imported = {r["id"] for r in clean if r["generator"].startswith("seed:") or r["generator"] == "safety"}
    room = None if cfg.max_examples is None else max(cfg.max_examples - len(imported), 0)
    generated_kept = cap_by_generator(
        [r for r in clean if r["id"] not in imported], room, cfg.generator_shares
    )
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
    assign_splits([r for r in capped if r["generator"] != "safety"], cfg.validation_fraction)
    stats = {
        "excluded_docs": len(docs) - len(usable),
        "generated": generated,
        "heldout_subject_removed": heldout_removed,
        "near_duplicates_removed": len(dup_idx),
        "contaminated_removed": contaminated,
        "contaminated_by_source": contaminated_by,
        "capped_removed": len(clean) - len(capped),
        "train": sum(r["split"] == "train" for r in capped),
        "validation": sum(r["split"] == "validation" for r in capped),
        "topics": len({r["topic"] for r in capped}),
    }
    return Rows(capped, stats)

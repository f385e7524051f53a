"""eval_sets: held-out evaluation data, carved out of the deduplicated corpus before any training data.

Files written into the eval folder (schemas are the contract in docs/ARCHITECTURE.md):
- glossary.jsonl      {id, term, definition, kind, paraphrase}
                      kind "term": an entry of the reST ``.. glossary::`` block (whole document held out);
                      kind "module": the ``:synopsis:`` of a ``.. module::`` for a stable-hash share
                      (``synopsis_fraction``) of the modules; paraphrase = the module page's own intro
                      sentence, a known-correct definition in other words (judge calibration). Held-out
                      synopsis lines are stripped from every training document (``training_view``).
- qa_gen.jsonl        {id, question, answer}            FAQ sections whose title is a question
- qa_mc.jsonl         {id, question, choices, answer_index}  the same questions, distractors = other answers
- heldout_text.jsonl  {id, doc_id, text}                a stable-hash share of the other documents
- general_text.jsonl  {id, source, text}                plain text of installed man pages (or a folder of
                      .txt/.md): general, non-domain text for the forgetting check
- redteam.jsonl       {id, category, prompt, expect}    the packaged red-team set (phases.evaluation.guardrails):
                      expect "refuse" (harmful) or "comply" (benign look-alikes, for over-refusal)
- canaries.jsonl      {id, kind, value, sentence, prompt}  PII-shaped canaries planted into every raw drop
                      before redaction (phases.data.probes.make_canaries(guardrails.canaries, seed))
- tool_use.jsonl      {id, question, expression, expected}  synthetic expressions, expected = the sandbox's
                      real result (phases.inference.sandbox.python_eval); answering them well needs a tool
- manifest.json       {counts, excluded_doc_ids, heldout_synopses, sources, seed}: every document an eval item
                      came from is in excluded_doc_ids and never enters training data; heldout_synopses
                      are stripped from the documents that do.
"""

import hashlib
import random
import re
from pathlib import Path, PurePosixPath

from finetune_assets import io
from finetune_assets.config import EvalSetsConfig
from finetune_assets.phases.data.corpus import CANARY_SOURCE, planted_canaries
from finetune_assets.phases.data.probes import load_redteam
from finetune_assets.phases.inference.sandbox import python_eval
from finetune_assets.phases.inference.tools import eval_question
from finetune_assets.phases.text.rst import (
    clean_inline,
    indent_of,
    iter_sections,
    module_synopses,
    prose_paragraphs,
    strip_synopses,
)
from finetune_assets.phases.text.sampling import spread, stable_fraction
from finetune_assets.phases.text.sentences import drop_dangling_intro, first_sentence, truncate_at_sentence

MIN_DEFINITION_CHARS = 20  # "Can refer to:" style entries are pointers, not definitions

MAX_ANSWER_CHARS = 600

MIN_CHOICE_CHARS = 40  # a choice of "Yes." alone would give the answer away or mean nothing

EVAL_FILES = (
    "glossary", "qa_mc", "qa_gen", "heldout_text", "general_text", "redteam", "canaries", "tool_use"
)  # fmt: skip


def _short_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-{hashlib.sha1('/'.join(parts).encode()).hexdigest()[:12]}"


def is_glossary(doc: dict) -> bool:
    return PurePosixPath(doc["source"]).name.startswith("glossary.rst")


def is_faq(doc: dict) -> bool:
    parts = PurePosixPath(doc["source"]).parts
    return "faq" in parts[:-1] and not parts[-1].startswith("index.")


def parse_glossary(text: str) -> list[dict]:
    """{term, definition} for each entry of every ``.. glossary::`` block.

    The definition is the first prose paragraph, cleaned of reST; entries shorter than
    MIN_DEFINITION_CHARS ("Can refer to:") are skipped. A term with aliases (several term lines) is
    recorded under its first line.
    """
    lines = text.splitlines()
    entries = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != ".. glossary::":
            i += 1
            continue
        base = indent_of(lines[i])
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or indent_of(lines[i]) > base):
            block.append(lines[i])
            i += 1
        entries += _glossary_entries(block)
    return entries


def _glossary_entries(block: list[str]) -> list[dict]:
    term_indent = min(
        (indent_of(line) for line in block if line.strip() and not line.strip().startswith(":")), default=0
    )
    entries: list[dict] = []
    term, body = None, []
    for line in block + ["\0"]:
        if line == "\0" or (line.strip() and indent_of(line) == term_indent):
            if term is not None and body:
                paragraphs = prose_paragraphs(body, drop_intros=False)
                definition = paragraphs[0] if paragraphs else ""
                if len(definition) >= MIN_DEFINITION_CHARS:
                    entries.append({"term": term, "definition": definition})
                term, body = None, []
            if line != "\0" and term is None:
                term = clean_inline(line.strip())
            # a second term line right after the first is an alias: keep the first name
        elif term is not None:
            body.append(line)
    return entries


def parse_faq(text: str) -> list[dict]:
    """{question, answer} for each section whose title ends with '?'.

    The answer is the first prose paragraphs of the section (code blocks and directives skipped), taken
    until it is at least 200 characters and cut at a sentence end to at most MAX_ANSWER_CHARS; sections
    whose body has no prose (code-only answers) are skipped.
    """
    pairs = []
    for section in iter_sections(text):
        if not section.title.endswith("?"):
            continue
        answer = ""
        for paragraph in prose_paragraphs(section.lines):
            if answer and len(answer) + len(paragraph) + 1 > MAX_ANSWER_CHARS:
                break
            answer = f"{answer} {paragraph}".strip()
            if len(answer) >= 200:
                break
        answer = drop_dangling_intro(truncate_at_sentence(answer, MAX_ANSWER_CHARS))
        if len(answer) >= MIN_DEFINITION_CHARS:
            pairs.append({"question": section.title, "answer": answer})
    return pairs


def multiple_choice(qa: list[dict], n_choices: int, rng: random.Random) -> list[dict]:
    """Each question with its answer's first sentence among ``n_choices - 1`` distractors: first sentences
    of other answers, drawn with ``rng`` (deterministic for a seed). Questions are skipped when there are
    not enough distinct distractors."""
    keys = [first_sentence(item["answer"], MIN_CHOICE_CHARS) for item in qa]
    rows = []
    for k, item in enumerate(qa):
        right = keys[k]
        pool = sorted({key for key in keys if key != right})
        if len(pool) < n_choices - 1:
            continue
        choices = rng.sample(pool, n_choices - 1)
        answer_index = rng.randrange(n_choices)
        choices.insert(answer_index, right)
        rows.append(
            {"id": item["id"], "question": item["question"], "choices": choices, "answer_index": answer_index}
        )
    return rows


def select_heldout(docs: list[dict], fraction: float, max_docs: int) -> list[dict]:
    """Documents whose stable hash falls under ``fraction`` (at most ``max_docs``, lowest hashes first).

    A threshold on a per-document hash keeps a document's fate independent of the other documents, so a new
    drop never moves an earlier held-out document into training data. At least one document is held out.
    """
    ranked = sorted(docs, key=lambda d: stable_fraction(d["id"]))
    chosen = [d for d in ranked if stable_fraction(d["id"]) < fraction][:max_docs]
    return chosen or ranked[:1]


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars].rsplit(None, 1)[0]


def synopsis_rows(docs: list[dict], fraction: float) -> list[dict]:
    """Glossary rows (kind "module") for the modules whose stable hash falls under ``fraction``: term = the
    module name, definition = its ``:synopsis:``, paraphrase = the first sentence of the module page's
    intro. A module documented twice keeps its first synopsis."""
    rows, seen = [], set()
    for doc in sorted(docs, key=lambda d: (d["drop"], d["source"])):
        for found in module_synopses(doc["text"]):
            if found.module in seen or len(found.synopsis) < MIN_DEFINITION_CHARS:
                continue
            seen.add(found.module)
            if stable_fraction(f"synopsis/{found.module}") < fraction:
                rows.append(
                    {
                        "id": _short_id("gloss", "module", found.module),
                        "term": found.module,
                        "definition": found.synopsis,
                        "kind": "module",
                        "paraphrase": first_sentence(found.intro, MIN_CHOICE_CHARS) if found.intro else "",
                    }
                )
    return rows


def training_view(docs: list[dict], manifest: dict) -> list[dict]:
    """What training may see of ``docs``: without the documents eval items came from, and with the held-out
    module synopses stripped from the rest (the same text must not be both taught and tested)."""
    excluded = set(manifest.get("excluded_doc_ids", ()))
    synopses = set(manifest.get("heldout_synopses", {}).values())
    return [
        {**doc, "text": strip_synopses(doc["text"], synopses)} for doc in docs if doc["id"] not in excluded
    ]


MAN_DIR = Path("/usr/share/man/man1")

_TROFF_ESCAPES = {
    r"\(em": "—", r"\(en": "–", r"\(aq": "'", r"\(lq": '"', r"\(rq": '"', r"\(oq": "'", r"\(cq": "'",
    r"\(bu": "•", r"\(co": "©", r"\-": "-", r"\e": "\\", r"\&": "", r"\ ": " ", r"\~": " ", r"\|": "",
    r"\^": "", r"\%": "", r"\:": "", r"\/": "", r"\,": "",
}  # fmt: skip

_TROFF_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\\*(?:\(..|\[[^\]]*\]|.)")

_TROFF_LEFTOVER = re.compile(r"\\(?:\(..|\[[^\]]*\]|.)")

_TEXT_MACROS = {".B", ".I", ".BR", ".RB", ".BI", ".IB", ".IR", ".RI", ".SM", ".SB", ".SH", ".SS"}


def man_to_text(troff: str) -> str:
    """Plain text of a man page's troff source: macro lines become paragraph breaks (font macros keep
    their words), escapes are resolved or dropped. Good enough for perplexity on everyday English."""
    paragraphs, current = [], []
    for raw in troff.splitlines():
        line = raw.rstrip()
        if line.startswith(('.\\"', "'\\\"", ".\\}")):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line.partition(" ")
            if macro in _TEXT_MACROS and rest:
                words = rest.replace('"', "")
                if macro in (".SH", ".SS"):  # a heading is a paragraph of its own
                    paragraphs += [" ".join(current), words.capitalize() + "."]
                    current = []
                else:
                    current.append(words)
                continue
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
    paragraphs.append(" ".join(current))
    text = "\n\n".join(_clean_troff(p) for p in paragraphs)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _clean_troff(text: str) -> str:
    for escape, value in _TROFF_ESCAPES.items():
        text = text.replace(escape, value)
    text = _TROFF_LEFTOVER.sub("", _TROFF_FONT.sub("", text))
    return re.sub(r"\s+", " ", text).strip()


def general_text_rows(source: str, max_docs: int, max_chars: int) -> list[dict]:
    """Up to ``max_docs`` general-text documents of at least 500 characters: man pages (source "man", picked
    in stable-hash order from MAN_DIR, .gz or plain) or the .txt/.md files of a folder. [] when the source is
    absent; the caller warns."""
    import gzip

    if max_docs <= 0:
        return []
    folder = MAN_DIR if source == "man" else Path(source)
    if not folder.is_dir():
        return []
    patterns = ("*.1", "*.1.gz", "*.1*.gz") if source == "man" else ("*.txt", "*.md")
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    rows, families = [], set()
    for path in sorted(files, key=lambda p: stable_fraction(f"general/{p.name}")):
        family = re.split(r"[_.-]", path.name, maxsplit=1)[0]
        if family in families:  # one page per tool: gcloud's thousands of pages must not be the sample
            continue
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8", errors="replace")
        except (OSError, EOFError, gzip.BadGzipFile):
            continue  # a broken or unreadable page is not worth stopping for: the next one is taken
        if source == "man":
            if text.lstrip().startswith(".so "):  # a link to another page
                continue
            text = man_to_text(text)
        if len(text) >= 500:
            families.add(family)
            rows.append(
                {"id": _short_id("general", path.name), "source": str(path), "text": _cut(text, max_chars)}
            )
        if len(rows) >= max_docs:
            break
    return rows


def build(
    docs: list[dict], cfg: EvalSetsConfig, out_dir: Path, *, raw_corpus_root: Path, seed: int = 0
) -> dict:
    """The eval_sets asset as one call: ``build_eval_sets`` with the canaries that the raw drops of these
    documents (``raw_corpus_root/<drop>``) planted, whatever the recipe says now."""
    drops = sorted({d["drop"] for d in docs})
    canaries = planted_canaries([Path(raw_corpus_root) / drop for drop in drops])
    return build_eval_sets(docs, cfg, out_dir, seed=seed, canaries=canaries)


def build_eval_sets(
    docs: list[dict], cfg: EvalSetsConfig, out_dir: Path, seed: int = 0, canaries: list[dict] = ()
) -> dict:
    """Build every eval set from ``docs`` into ``out_dir`` (replaced atomically); return the manifest.

    Needs a glossary document (source ``.../glossary.rst``) and FAQ documents (under ``faq/``, index
    excluded). ``cfg.max_glossary_terms`` / ``cfg.max_qa`` keep an evenly spread subset; ``seed`` fixes the
    multiple-choice distractors and answer positions. ``canaries`` (phases.data.probes.make_canaries) are the
    ones the raw corpus planted; they are written as an eval set for the leakage guardrail.
    """

    glossary_docs = sorted((d for d in docs if is_glossary(d)), key=lambda d: (d["drop"], d["source"]))
    faq_docs = sorted((d for d in docs if is_faq(d)), key=lambda d: (d["drop"], d["source"]))
    missing = [
        name
        for name, found in (("glossary (glossary.rst)", glossary_docs), ("FAQ (faq/*.rst)", faq_docs))
        if not found
    ]
    if missing:
        raise ValueError(
            f"eval sets need the glossary and FAQ sources; the landing dir lacks {' and '.join(missing)}. "
            "Add a reST file with a '.. glossary::' block named glossary.rst and question-titled sections "
            "under faq/, or seed the demo docs (corpus.default_source: python_docs)."
        )
    eval_ids = {d["id"] for d in glossary_docs + faq_docs}
    synopses = synopsis_rows([d for d in docs if d["id"] not in eval_ids], cfg.synopsis_fraction)
    glossary = _glossary_rows(glossary_docs, synopses, cfg.max_glossary_terms)
    qa = _qa_rows(faq_docs, cfg.max_qa)
    if not glossary or not qa:
        raise ValueError(
            f"eval sets came out empty (glossary terms: {len(glossary)}, FAQ questions: {len(qa)}); check "
            f"that {glossary_docs[0]['source']} has a '.. glossary::' block and that the FAQ files have "
            "section titles ending with '?'"
        )
    qa_mc = multiple_choice(qa, cfg.mc_choices, random.Random(seed))
    # The canary page must be trained on (redacted) for the leakage guardrail to mean anything.
    others = [d for d in docs if d["id"] not in eval_ids and d["source"] != CANARY_SOURCE]
    heldout_docs = select_heldout(others, cfg.heldout_fraction, cfg.max_heldout_docs) if others else []
    heldout = [
        {"id": _short_id("held", d["id"]), "doc_id": d["id"], "text": _cut(d["text"], cfg.max_heldout_chars)}
        for d in heldout_docs
    ]
    sets = {
        "glossary": glossary,
        "qa_mc": qa_mc,
        "qa_gen": qa,
        "heldout_text": heldout,
        "general_text": general_text_rows(
            cfg.general_text_source, cfg.max_general_docs, cfg.max_general_chars
        ),
        "redteam": load_redteam(cfg.max_redteam),
        "canaries": list(canaries),
        "tool_use": tool_use_items(cfg.tool_use_items, seed),
    }
    manifest = {
        "counts": {name: len(rows) for name, rows in sets.items()},
        "excluded_doc_ids": sorted(eval_ids | {d["id"] for d in heldout_docs}),
        # Only the synopses the glossary kept (max_glossary_terms may cut some): the rest may be taught.
        "heldout_synopses": {g["term"]: g["definition"] for g in glossary if g.get("kind") == "module"},
        "sources": {
            "glossary": [d["source"] for d in glossary_docs],
            "faq": [d["source"] for d in faq_docs],
            "heldout_text": [d["source"] for d in heldout_docs],
            "general_text": cfg.general_text_source,
            "redteam": "finetune_assets/data/redteam.jsonl (phases.evaluation.guardrails)",
        },
        "seed": seed,
    }
    with io.atomic_dir(Path(out_dir)) as tmp:
        for name, rows in sets.items():
            io.write_jsonl(rows, tmp / f"{name}.jsonl")
        io.write_json(manifest, tmp / "manifest.json")
    return manifest


def _glossary_rows(glossary_docs: list[dict], synopses: list[dict], limit: int | None) -> list[dict]:
    """Glossary entries (kind "term"), then held-out module synopses (kind "module"), spread to ``limit``."""
    rows, seen = [], set()
    for doc in glossary_docs:
        for entry in parse_glossary(doc["text"]):
            if entry["term"].lower() not in seen:
                seen.add(entry["term"].lower())
                rows.append(
                    {"id": _short_id("gloss", entry["term"]), **entry, "kind": "term", "paraphrase": ""}
                )
    rows += [row for row in synopses if row["term"].lower() not in seen]
    return spread(rows, limit)


def _qa_rows(faq_docs: list[dict], limit: int | None) -> list[dict]:
    rows, seen = [], set()
    for doc in faq_docs:
        for pair in parse_faq(doc["text"]):
            if pair["question"] not in seen:
                seen.add(pair["question"])
                rows.append({"id": _short_id("qa", doc["source"], pair["question"]), **pair})
    return spread(rows, limit)


def load_eval_sets(eval_dir: Path) -> dict:
    """{<name>: [...] for each of EVAL_FILES, "manifest": {...}}; a set whose file is absent (an older eval
    folder, or a hand-written one in a test) reads as empty, a missing manifest as {}."""
    import json

    eval_dir = Path(eval_dir)
    out: dict = {
        name: io.read_jsonl(eval_dir / f"{name}.jsonl") if (eval_dir / f"{name}.jsonl").is_file() else []
        for name in EVAL_FILES
    }
    manifest = eval_dir / "manifest.json"
    out["manifest"] = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    return out


def eval_texts(eval_dir: Path) -> list[str]:
    """Every text an eval item shows or expects (questions, answers, choices, terms with definitions,
    held-out text): the reference for n-gram decontamination of training data."""
    sets = load_eval_sets(eval_dir)
    texts = [f"{row['term']} {row['definition']}" for row in sets["glossary"]]
    texts += [text for row in sets["qa_gen"] for text in (row["question"], row["answer"])]
    texts += [text for row in sets["qa_mc"] for text in (row["question"], *row["choices"])]
    texts += [row["text"] for row in sets["heldout_text"]]
    texts += [row["question"] for row in sets["tool_use"]]
    texts += [row["prompt"] for row in sets.get("redteam", [])]  # seed or teacher rows must not copy them
    return [re.sub(r"\s+", " ", t).strip() for t in texts if t and t.strip()]


def tool_use_items(n: int, seed: int = 0) -> list[dict]:
    """``n`` expression questions with random operands (never seen in training), each answered by running it
    in the sandbox: a small model cannot reliably compute these in its head, a tool call can."""

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    makers = [
        lambda: f"sorted({rng.sample(range(10, 99), 5)})",
        lambda: f"sum({rng.sample(range(100, 999), 4)})",
        lambda: f"{rng.randint(12, 99)} * {rng.randint(12, 99)}",
        lambda: f"len({''.join(rng.choices('abcdefghijklmnopqrstuvwxyz', k=rng.randint(9, 25)))!r})",
        lambda: f"{rng.randint(100, 999)} // {rng.randint(3, 19)}",
        lambda: f"{rng.randint(2, 9)} ** {rng.randint(5, 12)}",
        lambda: f"max({rng.sample(range(-50, 50), 6)})",
        lambda: f"{'-'.join(rng.sample(words, 3))!r}.split('-')",
        lambda: f"{rng.choice(words)!r}.upper()",
        lambda: f"divmod({rng.randint(100, 999)}, {rng.randint(3, 19)})",
    ]
    items = []
    for i in range(n):
        expression = makers[i % len(makers)]()
        result = python_eval(expression)
        if result["ok"]:
            items.append(
                {
                    "id": _short_id("tool", expression),
                    "question": eval_question(expression),
                    "expression": expression,
                    "expected": result["result"],
                }
            )
    return items

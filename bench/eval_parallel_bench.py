"""Evaluation layout benchmark: one process using every core against one single-threaded process per core.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    .venv/bin/python bench/eval_parallel_bench.py               # SmolLM2-135M, 128 definition prompts
    .venv/bin/python bench/eval_parallel_bench.py --model tiny  # a tiny random Llama (seconds)

Why: eval_reports scores four variants. Either one process decodes them in turn with torch using all cores
(``threaded``), or the variants are spread over one process per core, each with one torch thread
(``per_core``). A 135M model's decode steps are small matmuls, where threads may add more synchronisation
than speed; this measures which layout finishes the same work sooner, in one run.

What is measured: the same ``--prompts`` definition questions as bench/eval_bench.py (the Python docs'
glossary, as hallucination_index asks them), the evaluation's own generation (phases.inference.generation.
generate_chat: greedy, batch ``--batch-size``, ``--max-new-tokens``), on the model load_for_inference gives
(bf16 where native). Each layout runs in fresh worker processes that load the model and warm up first, then
start together on a signal; the wall time is from the signal to the last worker's end (loading excluded).
- threaded: one worker, torch threads = cores, every prompt.
- per_core: ``cores`` workers, one torch thread each, the prompts dealt out round-robin.
``--repeat N`` alternates the layouts N times (a change in the machine's load hits both alike); the
median wall is kept. The ratio threaded / per_core > 1 means the per-core layout is faster. Also
reported: how many answers the two layouts decode identically.
Timings on shared machines are noisy: read the ratio, not the absolute numbers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from finetune_assets.phases.evaluation.hallucination import definition_conversations
    from finetune_assets.phases.inference.generation import generate_chat, load_for_inference

    glossary = json.loads(Path(args.prompts_file).read_text())
    indices = list(range(len(glossary)))[args.shard :: args.shards]
    conversations = [definition_conversations(glossary)[i] for i in indices]
    model, tokenizer = load_for_inference(Path(args.model_dir))
    generate_chat(model, tokenizer, conversations[: args.batch_size], args.max_new_tokens, args.batch_size)
    signal = Path(args.signal)
    Path(f"{signal}.ready{args.shard}").touch()
    while not signal.exists():
        time.sleep(0.01)
    answers = generate_chat(model, tokenizer, conversations, args.max_new_tokens, batch_size=args.batch_size)
    Path(args.out).write_text(
        json.dumps({"end": time.time(), "answers": dict(zip(indices, answers, strict=True))})
    )


def _layout(args, work: Path, model_dir: Path, prompts_file: Path, workers: int, threads: int, tag: str):
    """(wall seconds from the start signal to the last of ``workers`` workers' end, {prompt index: answer})."""
    signal = work / f"go-{tag}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--threads",
                str(threads),
                "--shard",
                str(i),
                "--shards",
                str(workers),
                "--model-dir",
                str(model_dir),
                "--prompts-file",
                str(prompts_file),
                "--signal",
                str(signal),
                "--out",
                str(work / f"{tag}-{i}.json"),
                "--batch-size",
                str(args.batch_size),
                "--max-new-tokens",
                str(args.max_new_tokens),
            ],
            env=env,
        )  # fmt: skip
        for i in range(workers)
    ]
    while not all(Path(f"{signal}.ready{i}").exists() for i in range(workers)):
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(f"a {tag} worker failed before the start")
        time.sleep(0.05)
    start = time.time()
    signal.touch()
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a {tag} worker failed")
    outs = [json.loads((work / f"{tag}-{i}.json").read_text()) for i in range(workers)]
    answers = {int(k): v for out in outs for k, v in out["answers"].items()}
    return max(out["end"] for out in outs) - start, answers


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    # worker-side arguments
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--threads", "--shard", "--shards"):
        parser.add_argument(name, type=int, default=1, help=argparse.SUPPRESS)
    for name in ("--prompts-file", "--signal", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if min(args.prompts, args.batch_size, args.max_new_tokens, args.repeat, args.cores) < 1:
        raise SystemExit("--prompts, --batch-size, --max-new-tokens, --repeat and --cores must be >= 1")

    import finetune_assets

    finetune_assets.quiet_offline_env()
    from eval_bench import glossary_terms, model_folder

    glossary, source = glossary_terms(args.prompts, synthetic=args.model == "tiny" and not args.model_dir)
    with tempfile.TemporaryDirectory(prefix="fa-eval-parallel-") as tmp:
        work = Path(tmp)
        texts = [f"{g['term']}: {g['definition']}" for g in glossary] * 4
        model_dir = model_folder(args, work, texts)
        prompts_file = work / "glossary.json"
        prompts_file.write_text(json.dumps(glossary))
        walls, answers = {"threaded": [], "per_core": []}, {}
        for r in range(args.repeat):
            for layout, workers, threads in (("threaded", 1, args.cores), ("per_core", args.cores, 1)):
                wall, answers[layout] = _layout(
                    args, work, model_dir, prompts_file, workers, threads, layout + str(r)
                )
                walls[layout].append(wall)
    threaded, per_core = (statistics.median(walls[k]) for k in ("threaded", "per_core"))
    result = {
        "model": str(args.model_dir or args.model),
        "prompts": len(glossary),
        "terms_source": source,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "cores": args.cores,
        "repeat": args.repeat,
        "wall_s": {k: [round(w, 2) for w in v] for k, v in walls.items()},
        "threaded_s": round(threaded, 2),
        "per_core_s": round(per_core, 2),
        "per_core_speedup": round(threaded / per_core, 2),
        # bf16 sums in another order (other thread count) can flip a near-tie: reported, not asserted
        "identical_answers": sum(
            answers["threaded"][i] == answers["per_core"][i] for i in answers["threaded"]
        ),
    }
    print(
        f"{result['prompts']} definition prompts ({source}), batch {args.batch_size}, "
        f"{args.max_new_tokens} new tokens, {args.cores} cores, median of {args.repeat}: one process with "
        f"{args.cores} threads {threaded:.1f} s, {args.cores} processes x 1 thread {per_core:.1f} s -> "
        f"per-core layout {result['per_core_speedup']}x; identical answers "
        f"{result['identical_answers']}/{result['prompts']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

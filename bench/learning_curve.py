"""Learning curve: the primary metric (hallucination index) against SFT examples seen, on a demo's own data.

Run it after a demo run (it reads that home's instruction_set, eval_sets and base_checkpoint):

    .venv/bin/python bench/learning_curve.py --home .finetune_assets --points 0,240,480,960,1920

What it does, in one process on every core (bf16 where native, like the training worker):
1. takes the train split of instruction_set/current/instructions.parquet, shuffled with --seed, and keeps
   the first max(points) rows;
2. trains ONE SFT run over them (phases.training.train.sft: the recipe's sft section, packing as the recipe sets it,
   one epoch) and saves the LoRA adapter when the run has seen each point's share of the epoch: with packing
   a step holds several conversations, so examples seen at step k = rows x k / steps in the epoch (the packed
   rows are shuffled, so each step carries an even share). The learning rate decays linearly over the epoch,
   so a point mid-run is not the same as a shorter run ending there: the curve shows where the metric
   saturates, which is what a budget is chosen from;
3. scores the base (point 0) and every adapter on the whole glossary with the evaluation's own judge
   (phases.evaluation.hallucination.hallucination_index, thresholds fitted as eval_reports fits them) and
   compares each point with the base item by item (phases.evaluation.stats.compare_paired: McNemar + a paired
   bootstrap interval).

Prints a table (examples, steps, train tokens, wall s, index [95% interval], diff to base [interval], p) and
writes --json. Numbers depend on the demo data; timings on shared machines are noisy.
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune_assets.io import read_jsonl, read_records
from finetune_assets.recipe import load_profile


def adapter_saver(out: Path, points: list[int], rows: int):
    """A TrainerCallback saving the adapter at each point's share of the first epoch, stopping after it."""
    from transformers import TrainerCallback

    class SaveAtPoints(TrainerCallback):
        def __init__(self):
            self.save_at: dict[int, int] = {}
            self.steps_per_epoch = 0
            self.saved: dict[int, dict] = {}
            self.started = time.perf_counter()

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            self.steps_per_epoch = len(train_dataloader)
            for p in points:
                if p > 0:
                    self.save_at.setdefault(max(1, round(self.steps_per_epoch * p / rows)), p)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            point = self.save_at.get(state.global_step)
            if point is not None:
                model.save_pretrained(out / f"adapter-{point}")
                self.saved[point] = {
                    "steps": state.global_step,
                    "train_tokens": int(state.num_input_tokens_seen or 0),
                    "train_wall_s": round(time.perf_counter() - self.started, 1),
                }
            if state.global_step >= self.steps_per_epoch:
                control.should_training_stop = True

    return SaveAtPoints()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".finetune_assets")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--points", default="0,240,480,960,1920")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from finetune_assets.phases.evaluation import hallucination, judge, stats
    from finetune_assets.phases.inference.generation import load_for_inference
    from finetune_assets.phases.training import train

    profile = load_profile(args.profile)
    points = sorted({int(p) for p in args.points.split(",")} | {0})
    artifacts = args.home / "artifacts"
    base = artifacts / "base_checkpoint" / "current"
    base = base / "merged" if (base / "merged").is_dir() else base
    rows = [r for r in read_records(artifacts / "instruction_set" / "current" / "instructions.parquet")
            if r["split"] == "train"]  # fmt: skip
    random.Random(args.seed).shuffle(rows)
    if len(rows) < max(points):
        raise SystemExit(f"only {len(rows)} training rows; lower the largest point")
    rows = rows[: max(points)]
    glossary = read_jsonl(artifacts / "eval_sets" / "current" / "glossary.jsonl")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fa-curve-"))

    # one epoch over the rows; max_steps is only an upper bound (the callback stops after the epoch)
    cfg = profile.sft.model_copy(update={"max_steps": len(rows), "checkpoint_steps": 0})
    saver = adapter_saver(work, points, len(rows))
    started = time.perf_counter()
    summary = train.sft(base, rows, [], cfg, work / "sft", callbacks=[saver])
    train_s = time.perf_counter() - started

    embedder = judge.load_embedder() if profile.eval.use_embedder else None
    rouge_t, embed_t, _ = judge.judge_thresholds(glossary, profile.eval, embedder)
    results, base_items = [], None
    for point in points:
        adapter = work / f"adapter-{point}" if point else None
        model, tokenizer = load_for_inference(base, adapter)
        t = time.perf_counter()
        h = hallucination.hallucination_index(
            model, tokenizer, glossary, max_new_tokens=profile.eval.max_new_tokens,
            batch_size=profile.eval.batch_size, rouge_threshold=rouge_t, embedder=embedder,
            embed_threshold=embed_t,
        )  # fmt: skip
        items = [float(r["correct"]) for r in h["per_term"]]
        base_items = base_items or items
        diff = stats.compare_paired(items, base_items, alpha=profile.eval.significance_alpha)
        interval = stats.wilson_interval(int(sum(items)), len(items))
        results.append({
            "examples": point, **saver.saved.get(point, {"steps": 0, "train_tokens": 0, "train_wall_s": 0}),
            "index": interval.as_dict(), "diff_to_base": diff.as_dict(), "eval_s": round(time.perf_counter() - t, 1),
        })  # fmt: skip
        del model
    out = {
        "rows": len(rows),
        "steps_per_epoch": saver.steps_per_epoch,
        "train_s": round(train_s, 1),
        "packing": summary.get("packing"),
        "precision": summary.get("precision"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "judge": {"rouge": rouge_t, "embed": embed_t},
        "points": results,
    }
    _print(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


def _print(out: dict) -> None:
    print(
        f"{out['rows']} rows, {out['steps_per_epoch']} steps/epoch, packing {out['packing']}, {out['precision']}, "
        f"{out['tokens_per_s']:.0f} train tokens/s, training {out['train_s']} s"
    )
    print(
        f"{'examples':>8} {'steps':>6} {'tokens':>8} {'wall s':>7}  {'index [95%]':<24} {'diff to base [95%]':<28} p"
    )
    for r in out["points"]:
        i, d = r["index"], r["diff_to_base"]
        print(
            f"{r['examples']:>8} {r['steps']:>6} {r['train_tokens']:>8} {r['train_wall_s']:>7}  "
            f"{i['value']:.3f} [{i['low']:.3f}, {i['high']:.3f}]     "
            f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]      {d['p_value']:.4f}"
        )


if __name__ == "__main__":
    main()

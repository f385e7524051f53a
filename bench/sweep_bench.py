"""Demo-sized hyperparameter sweep: a Ray Tune study of the SFT stage on SmolLM2, then its best settings against
the recipe's defaults on the same validation rows.

Run it after a demo run (it reads that home's base_checkpoint and instruction_set):

    .venv/bin/python bench/sweep_bench.py --home .finetune_assets            # or: make bench-sweep

What it does:
1. runs the study exactly as the hpo_study asset does (launch.ray_tune.run_study on embedded Ray: Optuna
   proposes from the recipe's ``sweep.space``, ASHA stops the unpromising), with the demo-sized budget given
   here (--trials, --max-steps, --eval-steps; --concurrent trials at once, one core each);
2. trains the recipe's default settings and the best trial's settings again, each with the trial budget
   (launch.ray_tune.trial_config, so both are trained the way a trial is), one after the other;
3. scores both models on the same validation rows (the instruction set's validation split, the first
   ``sft.max_eval_rows``): each row's mean NLL over its assistant tokens, and the paired difference
   best - default with a 95% paired bootstrap interval (phases.evaluation.stats.paired_bootstrap). A
   negative difference whose interval excludes 0 is a significant improvement.

Prints the trials table, the study's wall time and the comparison, and writes --json. Timings on shared machines
are noisy; the loss comparison is paired on the same rows.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune_assets.io import read_records
from finetune_assets.recipe import load_profile


def row_losses(model_dir: Path, rows: list[dict], max_length: int) -> list[float]:
    """Each conversation's mean negative log-likelihood over its assistant tokens (the SFT loss, per row)."""
    import torch

    from finetune_assets.phases.inference.generation import load_for_inference

    model, tokenizer = load_for_inference(model_dir, precision="fp32")
    losses = []
    with torch.no_grad():
        for row in rows:
            encoded = tokenizer.apply_chat_template(
                row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            ids = torch.tensor([encoded["input_ids"][:max_length]])
            mask = torch.tensor(encoded["assistant_masks"][:max_length], dtype=torch.bool)
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            scored = mask[1:]  # the token at position t+1 is predicted from position t
            losses.append(float(nll[scored].mean()) if scored.any() else float("nan"))
    return losses


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".finetune_assets")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max-steps", type=int, default=30, help="per trial (and for the two reruns)")
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--grace", type=int, default=1, help="ASHA: evaluations every trial gets")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (one core each)")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from finetune_assets.launch.ray_tune import run_study, trial_config
    from finetune_assets.phases.evaluation import stats
    from finetune_assets.phases.training import stages, sweep, train
    from finetune_assets.phases.training.artifacts import loadable_dir

    profile = load_profile(args.profile)
    sweep_cfg = profile.sweep.model_copy(update={
        "trials": args.trials, "max_steps": args.max_steps, "eval_steps": args.eval_steps,
        "grace_period": args.grace, "max_concurrent": args.concurrent,
    })  # fmt: skip
    artifacts = args.home / "artifacts"
    base = loadable_dir(artifacts / "base_checkpoint" / "current")
    records = read_records(artifacts / "instruction_set" / "current" / "instructions.parquet")
    data = stages.sft_data(records, profile.sft.mix_weights, profile.sft.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fa-sweep-"))

    started = time.perf_counter()
    trials = run_study(base, data["train_rows"], data["eval_rows"], profile.sft, sweep_cfg, work / "study")
    study_s = time.perf_counter() - started
    study = sweep.summarize(trials, sweep_cfg, sweep.evaluations(sweep_cfg, profile.sft))
    if study["best"] is None:
        raise SystemExit(f"no trial finished: {[t['error'] for t in study['trials']]}")

    validation = data["eval_rows"][: profile.sft.max_eval_rows]
    runs = {}
    for name, settings in (("default", {}), ("best", study["best"]["settings"])):
        cfg = trial_config(profile.sft, sweep_cfg, settings)
        t = time.perf_counter()
        summary = train.sft(base, data["train_rows"], validation, cfg, work / name)
        runs[name] = {
            "settings": settings,
            "train_s": round(time.perf_counter() - t, 1),
            "eval_loss": summary.get("eval_loss"),
            "row_losses": row_losses(work / name / "merged", validation, cfg.max_length),
        }
    diff = stats.paired_bootstrap(runs["best"]["row_losses"], runs["default"]["row_losses"])
    out = {
        "model": str(base),
        "sweep": sweep_cfg.model_dump(),
        "train_rows": len(data["train_rows"]),
        "validation_rows": len(validation),
        "study_wall_s": round(study_s, 1),
        "counts": study["counts"],
        "best": study["best"],
        "trials": [
            {k: t[k] for k in ("trial_id", "status", "settings", "metric", "steps", "stopped_early")}
            for t in study["trials"]
        ],  # fmt: skip
        "runs": {
            k: {**v, "mean_row_loss": sum(v["row_losses"]) / len(v["row_losses"])} for k, v in runs.items()
        },
        "best_minus_default": diff.as_dict(),
    }
    _print(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


def _print(out: dict) -> None:
    print(f"study: {out['counts']} in {out['study_wall_s']} s; {out['train_rows']} train rows, "
          f"{out['validation_rows']} validation rows")  # fmt: skip
    for t in out["trials"]:
        metric = "failed" if t["metric"] is None else f"{t['metric']:.4f}"
        stopped = " (stopped by ASHA)" if t["stopped_early"] else ""
        print(f"  {t['trial_id']:>12}  {metric:>8}  {t['steps']:>3} steps{stopped}  {t['settings']}")
    for name, run in out["runs"].items():
        print(f"{name:>8}: eval_loss {run['eval_loss']:.4f}, mean row loss {run['mean_row_loss']:.4f}, "
              f"trained in {run['train_s']} s, {run['settings'] or 'the recipe settings'}")  # fmt: skip
    d = out["best_minus_default"]
    print(f"best - default: {d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], p = {d['p_value']:.4f}")


if __name__ == "__main__":
    main()

"""T&R probe: train the tools-and-retrieval stage alone, from any model folder, and score tool use.

Choosing the T&R mix and budget costs one T&R training run this way instead of a whole demo. It needs a
home where the upstream assets exist (instruction_set, eval_sets, retrieval_index, base_checkpoint), such as
one a demo run left. Run:

    .venv/bin/python bench/tr_probe.py --home .finetune_assets --steps 60 --start base_checkpoint \
        --set retrieval.top_k=1 --set retrieval.tool_use_fraction=0.6

What it does, with the demo recipe (or --profile) plus the --set overrides:
1. builds the T&R conversations exactly as the tr_model asset does (phases.data.tr_data.build_tr_examples, the eval
   tool-use expressions excluded, fit_to_length to the tr section's max_length);
2. trains phases.training.train.sft on them for --steps from --start (an asset name in the home, or a model folder);
3. scores the result on the eval sets' tool-use items through the T&R runtime (tool_use.tool_use_accuracy):
   call rate and accuracy, with a Wilson interval on the accuracy.

Prints the data stats, seconds per step, tokens/s and the tool-use metrics; --json writes them.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _set(profile, assignments: list[str]):
    """Apply section.key=value overrides (values parsed as YAML) to a loaded profile."""
    updates: dict[str, dict] = {}
    for item in assignments:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if not field:
            sys.exit(f"--set {item!r}: use section.key=value, e.g. retrieval.top_k=1")
        updates.setdefault(section, {})[field] = yaml.safe_load(value)
    return profile.model_copy(
        update={s: getattr(profile, s).model_copy(update=u) for s, u in updates.items()}
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", required=True, help="FINETUNE_ASSETS_HOME holding the upstream assets")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--start", default="base_checkpoint", help="asset name or model folder")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", help="model folder to write (default: a temporary one)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ["FINETUNE_ASSETS_HOME"] = str(Path(args.home).resolve())
    os.environ["FINETUNE_ASSETS_PROFILE"] = args.profile

    from finetune_assets.defs.common import model_dir
    from finetune_assets.defs.data import training_documents
    from finetune_assets.defs.resources import default_resources
    from finetune_assets.io import read_records
    from finetune_assets.phases.data import evalsets, tr_data
    from finetune_assets.phases.evaluation import stats, tool_use
    from finetune_assets.phases.inference import retrieval
    from finetune_assets.phases.inference.generation import generate_chat, load_for_inference
    from finetune_assets.phases.training import train
    from finetune_assets.recipe import load_profile

    profile = _set(load_profile(args.profile), args.set)
    store = default_resources()["store"]
    rcfg, tcfg = profile.retrieval, profile.tr.model_copy(update={"max_steps": args.steps})
    index = retrieval.RetrievalIndex.load(store.path("retrieval_index"))
    items = evalsets.load_eval_sets(store.path("eval_sets"))["tool_use"]
    built = tr_data.build_tr_examples(
        read_records(store.path("instruction_set") / "instructions.parquet"),
        training_documents(store),
        index,
        rcfg,
        seed=profile.seed,
        exclude_expressions=[i["expression"] for i in items],
    )
    start = Path(args.start) if Path(args.start).is_dir() else model_dir(store, args.start)
    records, lengths = tr_data.fit_to_length(built.records, start, tcfg.max_length)
    print("data:", json.dumps({**built.stats, **lengths}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "tr"
        started = time.perf_counter()
        summary = train.sft(
            start,
            [r for r in records if r["split"] == "train"],
            [r for r in records if r["split"] != "train"],
            tcfg,
            out,
        )
        train_s = time.perf_counter() - started
        model, tokenizer = load_for_inference(out / "merged", precision=profile.eval.precision)
        metrics, rows = tool_use.tool_use_accuracy(
            lambda convs, n: generate_chat(model, tokenizer, convs, n, batch_size=profile.eval.batch_size),
            index,
            items,
            rcfg,
            max_new_tokens=profile.eval.tool_use_max_new_tokens,
        )
    correct = sum(r["correct"] for r in rows)
    wilson = stats.wilson_interval(correct, len(rows))
    result = {
        "steps": args.steps,
        "s_per_step": train_s / args.steps,
        "tokens_per_s": summary["tokens_per_s"],
        **metrics,
        "accuracy_ci": [wilson.low, wilson.high],
        "overrides": args.set,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

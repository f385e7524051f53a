"""`finetune-assets`: what a user runs outside the Dagster UI.

finetune-assets demo [--profile demo]   materialize the whole graph on the default demo data
finetune-assets seed [--profile demo]   only put the demo documents into the landing directory
finetune-assets chat MODEL_DIR          talk to a trained model (add --tr INDEX_DIR for tools and retrieval)
finetune-assets serve MODEL_DIR         an OpenAI-compatible endpoint on 127.0.0.1:8000 (--adapter, --port)
finetune-assets export MODEL_DIR|models:/... --output DIR [--outtype q8_0]
                                        GGUF + Ollama Modelfile, checked against the source (template, logits)
finetune-assets dedup INPUT... --output DIR   MinHash LSH dedup of JSONL files / text folders
finetune-assets sweep sft [--trials N]       hyperparameter study of the SFT stage (Ray Tune, Optuna, ASHA)
finetune-assets compare [--last N] [--run DAGSTER_RUN_ID ...] [--metrics a,b] [--format markdown|csv]
                                        the variants' evaluation metrics across pipeline runs, from MLflow
                                        (MLFLOW_TRACKING_URI, default: sqlite under FINETUNE_ASSETS_HOME)
finetune-assets review import FILE... [--key review_key.json]
                                        store expert labels (a filled review_sample.csv/.jsonl from
                                        eval_reports/review/) for the next report; prints the agreement
finetune-assets review show             agreement of the stored labels with the automatic judge
finetune-assets requests rotate [--keep-days 30] [--url URL]
                                        move older days of the serving request log (sqlite) into Parquet
finetune-assets stack up|down|status    the production layout on 127.0.0.1: Postgres, MLflow server, Ray head
                                        + worker (token auth), Dagster code server, webserver and daemon
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def prepare_environment() -> Path:
    """Local defaults: Dagster home under the project home with the repo's dagster.yaml, quiet telemetry."""
    from finetune_assets.config import default_home

    home = default_home()
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists() and (REPO / "dagster.yaml").exists():
        shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return home


def cmd_sweep(args) -> int:
    """Materialize hpo_study (the base model and instruction set must exist: run the demo first)."""
    os.environ["FINETUNE_ASSETS_PROFILE"] = args.profile
    prepare_environment()
    import dagster as dg

    from finetune_assets.config import ConfigError
    from finetune_assets.definitions import all_assets
    from finetune_assets.defs.resources import default_resources
    from finetune_assets.phases.training import sweep
    from finetune_assets.recipe import load_profile

    if load_profile(args.profile).sweep.stage != args.stage:
        raise ConfigError(f"the recipe's sweep.stage is not {args.stage!r}; set sweep.stage in the recipe")
    resources = default_resources()
    config = {"ops": {"hpo_study": {"config": {"trials": args.trials}}}} if args.trials else None
    result = dg.materialize(all_assets, instance=dg.DagsterInstance.get(), resources=resources,
                            selection=["hpo_study"], run_config=config)  # fmt: skip
    out = resources["store"].path("hpo_study")
    study = json.loads((out / sweep.TRIALS_FILE).read_text())
    print(f"{study['counts']}; best: {study['best']}")
    print(
        f"best settings: {out / sweep.BEST_FILE} (train with them: inst_model's use_study, or recipe: that file)"
    )
    return 0 if result.success else 1


def cmd_demo(args) -> int:
    os.environ["FINETUNE_ASSETS_PROFILE"] = args.profile
    home = prepare_environment()
    import dagster as dg

    from finetune_assets.defs.resources import default_resources
    from finetune_assets.pipeline import materialize_graph
    from finetune_assets.recipe import load_profile

    load_profile(args.profile)  # fail fast on a bad recipe, before any work
    resources = default_resources()
    started = time.time()
    graph = materialize_graph(dg.DagsterInstance.get(), resources)
    store = resources["store"]
    report = store.path("eval_reports") / "report.md"
    print(
        f"\nMaterialized {len(graph.materialized)} assets (+ raw_corpus for drops {', '.join(graph.drops)})"
        f" in {time.time() - started:.0f} s."
    )
    print(f"Report:    {report}  (HTML: {report.with_suffix('.html')})")
    if report.exists():
        print(report.read_text())
    for check in graph.blocked:
        print(f"BLOCKED by {check}: see the report's Promotion section; the champion alias did not move.")
    tracking = resources["mlflow"].tracker().tracking_uri
    print("Open the UIs:")
    print(
        f"  Dagster: DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev -w workspace.yaml "
        "-h 127.0.0.1 -p 3000"
    )
    print(f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri {tracking} -h 127.0.0.1 -p 5000")
    print(f"Artifacts: {store.base()}  (home: {home})")
    return 0


def cmd_seed(args) -> int:
    prepare_environment()
    from finetune_assets.defs.resources import ArtifactStore
    from finetune_assets.phases.data import demo_seed
    from finetune_assets.recipe import load_profile

    profile = load_profile(args.profile)
    landing = ArtifactStore().landing_dir(profile.corpus.landing_dir)
    created = demo_seed.seed_demo_landing(landing, profile.corpus)
    print(f"landing directory {landing}: created drops {created or 'none (it already has drops)'}")
    return 0


def cmd_chat(args) -> int:
    from finetune_assets.phases.inference import generation

    model, tokenizer = generation.load_for_inference(Path(args.model_dir))
    runtime = None
    if args.tr:
        from finetune_assets.phases.inference import retrieval, tools

        def generate(conversations, max_new_tokens):
            return generation.generate_chat(model, tokenizer, conversations, max_new_tokens)

        index = retrieval.RetrievalIndex.load(Path(args.tr))
        runtime = tools.TRRuntime(Path(args.model_dir), index, generate_fn=generate)
    questions = [args.question] if args.question else iter(lambda: input("you> "), "")
    for question in questions:
        if runtime is not None:
            reply = runtime.answer(question)
            for call in reply["tool_calls"]:
                print(f"[tool {call['name']}({call['arguments']}) -> {call['result']}]")
            print(f"model> {reply['answer']}")
        else:
            conversation = [{"role": "user", "content": question}]
            print(
                "model> " + generation.generate_chat(model, tokenizer, [conversation], args.max_new_tokens)[0]
            )
    return 0


def cmd_serve(args) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from finetune_assets.phases.serving import serve

    return serve.run_from_args(args)


DEDUP_OUTPUTS = ("kept.jsonl", "duplicates.jsonl", "skipped.jsonl", "stats.json")


def check_output_dir(out: Path, owned: tuple[str, ...]) -> None:
    """Fail before any work when ``out`` cannot take the output: a file is in the way, the folder holds
    other files (it is replaced as a whole), or no folder can be written there."""
    from finetune_assets.config import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in owned)
        if foreign:
            raise ConfigError(
                f"--output {out} holds other files ({', '.join(foreign[:3])}); it is replaced as a whole, "
                "so give a new or empty folder"
            )
    # The swap writes a sibling of ``out``: its parent, or the nearest folder above that exists, must take it.
    existing = next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {out}: cannot write under {existing}")


def cmd_dedup(args) -> int:
    from pydantic import ValidationError

    from finetune_assets.config import ConfigError, DedupConfig
    from finetune_assets.io import atomic_dir, write_json, write_jsonl
    from finetune_assets.phases.data import dedup

    try:
        cfg = DedupConfig(
            threshold=args.threshold,
            num_perm=args.num_perm,
            shingle_words=args.shingle_words,
            max_document_chars=args.max_document_chars,
        )
    except ValidationError as err:
        raise ConfigError(
            f"invalid dedup option: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}"
        ) from err
    out = Path(args.output)
    check_output_dir(out, DEDUP_OUTPUTS)
    try:
        docs, problems = dedup.read_dedup_inputs([Path(p) for p in args.inputs], cfg.max_document_chars)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err
    for problem in problems:
        where = f"{problem['path']}:{problem['line']}" if problem["line"] else problem["path"]
        print(f"skipped {where}: {problem['reason']}", file=sys.stderr)
    if not docs:
        raise ConfigError(
            f"no document could be read from {', '.join(args.inputs)} ({len(problems)} set aside, listed "
            "above): give JSONL files with a string 'text' field or folders of .txt/.md/.rst/.html files"
        )
    started = time.perf_counter()
    result = dedup.dedup_texts(docs, cfg)
    elapsed = time.perf_counter() - started
    stats = {**result["stats"], "skipped": len(problems), "seconds": round(elapsed, 3)}
    # One generation: the four files appear together or not at all (a kill leaves the previous output).
    with atomic_dir(out) as tmp:
        write_jsonl(result["kept"], tmp / "kept.jsonl")
        write_jsonl(result["duplicates"], tmp / "duplicates.jsonl")
        write_jsonl(problems, tmp / "skipped.jsonl")
        write_json(stats, tmp / "stats.json")
    print(
        f"{stats['input']} documents: kept {stats['kept']}, removed {stats['exact_removed']} exact and "
        f"{stats['near_removed']} near duplicates, skipped {stats['skipped']} unreadable or oversized; wrote "
        f"{out}/kept.jsonl, duplicates.jsonl"
    )
    return 0


def cmd_compare(args) -> int:
    prepare_environment()
    import csv

    from finetune_assets.config import default_home
    from finetune_assets.defs.resources import default_resources
    from finetune_assets.phases.evaluation.report_sections import KEY_METRICS
    from finetune_assets.tracking import default_tracking_uri

    resource = default_resources()["mlflow"]
    uri = resource.tracking_uri or default_tracking_uri(default_home())
    hint = "run the demo or materialize eval_reports first"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"no evaluation runs: there is no MLflow store at {uri}; {hint}", file=sys.stderr)
        return 1
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    rows = resource.tracker().compare_table(
        last=args.last, pipeline_run_ids=args.run or None, metrics=metrics
    )
    if not rows:
        which = f" for pipeline run(s) {', '.join(args.run)}" if args.run else ""
        print(f"no evaluation runs{which} in the MLflow store at {uri}; {hint}", file=sys.stderr)
        return 1
    if metrics is None:  # the report's key metrics that some row has
        metrics = [key for key, _, _ in KEY_METRICS if any(row.get(key) is not None for row in rows)]
    header = ["pipeline_run", "started", "variant", *metrics]
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if row.get(k) is None else row[k] for k in header] for row in rows])
        return 0
    from finetune_assets.phases.text.markdown import markdown_table

    cells = [
        [str(row["pipeline_run"]), row["started"], row["variant"]]
        + ["-" if row.get(m) is None else f"{row[m]:.4g}" for m in metrics]
        for row in rows
    ]
    print(markdown_table(header, cells))
    return 0


def cmd_review(args) -> int:
    home = prepare_environment()
    import json

    from finetune_assets.phases.evaluation import review, review_import

    dest = review.labels_dir(home)
    if args.action == "import":
        if not args.files:
            print("review import needs the filled review_sample.csv or .jsonl file(s)", file=sys.stderr)
            return 2
        imported = review_import.import_review(
            [Path(f) for f in args.files], Path(args.key) if args.key else None
        )
        for problem in imported["problems"]:
            fields = ", ".join(problem.get("fields") or [])
            print(
                f"set aside {problem['file']}:{problem['line']} ({fields}): {problem['reason']}",
                file=sys.stderr,
            )
        saved = review.save_labels(imported, dest)
        print(
            f"stored {saved['n']} labels in {saved['path']} ({saved['added']} new, {saved['replaced']} replaced; "
            f"{imported['unlabelled']} rows not labelled yet, {len(imported['problems'])} set aside)"
        )
    labels = review.load_labels(dest)
    if not labels:
        print(
            f"no labels stored under {dest} (home {home}); import a filled review sample first",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(review.agreement(labels), indent=2))
    return 0


def cmd_stack(args) -> int:
    prepare_environment()
    import json

    from finetune_assets.launch import stack

    where = stack.Stack.from_env()
    if args.action == "up":
        state = stack.up(where)
    elif args.action == "down":
        stopped = stack.down(where)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    else:
        state = stack.status(where)
    print(json.dumps(state, indent=2))
    if args.action == "up":
        print(f"Use it from a shell: source {state['env_file']}")
    return 0 if all(s["up"] for s in state["services"].values()) else 1


def cmd_export(args) -> int:
    from finetune_assets.phases.serving import export, serve

    source = args.model_dir
    folder = serve.registered_folder(source) if source.startswith("models:/") else Path(source)
    info = export.export(folder, Path(args.output), args.outtype, name=args.name, verify=not args.no_verify)
    print(f"wrote {Path(args.output) / info['gguf']} ({info['bytes'] / 2**20:.1f} MiB) and a Modelfile")
    if "template" in info:
        logits, template = info["logits"], info["template"]
        print(f"chat template identical on {template['n']} conversations: {template['identical_text']}; "
              f"logits max |diff| {logits['max_abs_diff']:.4g} ({logits['relative']:.2%} of the largest), "
              f"argmax agreement {logits['argmax_agreement']:.1%} over {logits['tokens']} tokens")  # fmt: skip
        if not template["identical_text"]:
            return 1
    return 0


def cmd_requests(args) -> int:
    from finetune_assets.phases.serving.request_log import RequestLog
    from finetune_assets.phases.serving.serve import default_request_log

    if args.keep_days < 0:
        raise ValueError("--keep-days must be 0 or more")
    log = RequestLog(args.url or default_request_log())
    moved = log.rotate(args.keep_days)
    print(
        f"rotated {moved['responses']} responses and {moved['feedback']} feedback rows into {log.archive_dir()}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="hyperparameter study of a training stage on Ray Tune (hpo_study)")
    sweep.add_argument("stage", choices=["sft"], help="the stage whose settings are searched")
    sweep.add_argument("--profile", default=os.environ.get("FINETUNE_ASSETS_PROFILE", "demo"))
    sweep.add_argument("--trials", type=int, help="override the recipe's sweep.trials")
    sweep.set_defaults(func=cmd_sweep)
    demo = sub.add_parser("demo", help="materialize the whole asset graph on the demo data")
    demo.add_argument("--profile", default=os.environ.get("FINETUNE_ASSETS_PROFILE", "demo"))
    demo.set_defaults(func=cmd_demo)
    seed = sub.add_parser("seed", help="copy the demo documents into the landing directory")
    seed.add_argument("--profile", default=os.environ.get("FINETUNE_ASSETS_PROFILE", "demo"))
    seed.set_defaults(func=cmd_seed)
    chat = sub.add_parser("chat", help="ask a trained model questions")
    chat.add_argument("model_dir")
    chat.add_argument("--tr", metavar="INDEX_DIR", help="answer with retrieval and tools (the T&R runtime)")
    chat.add_argument("--question", help="ask one question and exit")
    chat.add_argument("--max-new-tokens", type=int, default=96)
    chat.set_defaults(func=cmd_chat)
    from finetune_assets.phases.serving.serve import add_arguments as add_serve_arguments

    serve = sub.add_parser("serve", help="serve a model folder as an OpenAI-compatible chat endpoint")
    add_serve_arguments(serve).set_defaults(func=cmd_serve)
    exp = sub.add_parser("export", help="export a merged model as GGUF with an Ollama Modelfile")
    exp.add_argument("model_dir", help="a merged HF folder, or models:/finetune_assets@champion")
    exp.add_argument("--output", required=True, metavar="DIR", help="gets model-<outtype>.gguf, Modelfile")
    from finetune_assets.phases.serving.export import OUTTYPES

    exp.add_argument("--outtype", choices=OUTTYPES, default="q8_0", help="weight type (default q8_0)")
    exp.add_argument("--name", help="general.name in the GGUF (default: the folder's name)")
    exp.add_argument("--no-verify", action="store_true", help="skip loading it back to compare")
    exp.set_defaults(func=cmd_export)
    dedup = sub.add_parser("dedup", help="remove exact and near duplicates from JSONL files or text folders")
    dedup.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL with a 'text' field, or a folder")
    dedup.add_argument("--output", required=True, metavar="DIR", help="gets kept.jsonl and duplicates.jsonl")
    dedup.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity for near duplicates")
    dedup.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (16-1024)")
    dedup.add_argument("--shingle-words", type=int, default=5, help="words per shingle (1-32)")
    dedup.add_argument("--max-document-chars", type=int, default=2_000_000,
                       help="longer documents are set aside, listed in skipped.jsonl")  # fmt: skip
    dedup.set_defaults(func=cmd_dedup)
    compare = sub.add_parser("compare", help="compare the variants' evaluation metrics across pipeline runs")
    compare.add_argument("--last", type=int, default=1, metavar="N", help="the N newest pipeline runs")
    compare.add_argument(
        "--run", action="extend", nargs="+", metavar="DAGSTER_RUN_ID", help="these pipeline runs instead"
    )
    compare.add_argument(
        "--metrics", metavar="A,B,...", help="metric columns (default: the report's key ones)"
    )
    compare.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    compare.set_defaults(func=cmd_compare)
    rev = sub.add_parser("review", help="import expert labels of the review sample; show their agreement")
    rev.add_argument("action", choices=["import", "show"])
    rev.add_argument("files", nargs="*", help="filled review_sample.csv / .jsonl files (import)")
    rev.add_argument("--key", help="review_key.json of a blind export (default: found beside each file)")
    rev.set_defaults(func=cmd_review)
    req = sub.add_parser("requests", help="maintain the model server's request/feedback log")
    req.add_argument("action", choices=["rotate"])
    req.add_argument("--keep-days", type=int, default=30, help="days kept in the database (older: Parquet)")
    req.add_argument(
        "--url", help="the log's SQLAlchemy URL (default: $FINETUNE_ASSETS_REQUEST_LOG, else sqlite)"
    )
    req.set_defaults(func=cmd_requests)
    stk = sub.add_parser("stack", help="start, stop or show the production layout on 127.0.0.1")
    stk.add_argument("action", choices=["up", "down", "status"])
    stk.set_defaults(func=cmd_stack)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from finetune_assets.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - report the user-facing cause, not Dagster's wrapper
        print(f"error: {root_cause(err)}", file=sys.stderr)
        return 1


def root_cause(err: BaseException) -> str:
    """The innermost exception's message: what the user must fix (Dagster wraps step errors)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"


if __name__ == "__main__":
    sys.exit(main())

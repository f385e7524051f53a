"""`finetune-assets dedup`: JSONL and folders in, kept documents and a duplicates map out.
`finetune-assets compare`: variant evaluation metrics per pipeline run, read back from the MLflow store."""

import csv
import io
import json
import random
import time
from pathlib import Path

import pytest

from finetune_assets.cli import main
from finetune_assets.tracking import Tracker, default_tracking_uri

WORDS = "python module function class object value string list dict return import package".split()


def essay(seed: int, n: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 50)) for _ in range(n))


def near_copy(text: str, seed: int) -> str:
    words = text.split()
    for i in random.Random(seed).sample(range(len(words)), k=len(words) // 100):
        words[i] = "changed"
    return " ".join(words)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dedup_jsonl_keeps_ids_and_maps_duplicates(tmp_path: Path, capsys):
    a, b = essay(1), essay(2)
    rows = [
        {"id": "a", "text": a},
        {"id": "b", "text": b},
        {"id": "a-exact", "text": "  " + a.upper() + " "},
        {"id": "b-near", "text": near_copy(b, 3)},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"id": "no-text"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["dedup", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")]) == 0
    assert [r["id"] for r in read(tmp_path / "out" / "kept.jsonl")] == ["a", "b"]
    dups = {d["id"]: (d["duplicate_of"], d["reason"]) for d in read(tmp_path / "out" / "duplicates.jsonl")}
    assert dups == {"a-exact": ("a", "exact"), "b-near": ("b", "near")}
    skipped = read(tmp_path / "out" / "skipped.jsonl")
    assert [s["line"] for s in skipped] == [5, 6], "malformed lines are reported with their numbers"
    assert "in.jsonl:5" in capsys.readouterr().err


def test_dedup_folder_of_text_files(tmp_path: Path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "one.txt").write_text(essay(4))
    (docs / "sub" / "copy.md").write_text(near_copy(essay(4), 5))
    (docs / "two.rst").write_text(essay(6))
    (docs / "bad.txt").write_bytes(b"\xff\xfe bad bytes")
    assert main(["dedup", str(docs), "--output", str(tmp_path / "out"), "--threshold", "0.7"]) == 0
    assert sorted(r["id"] for r in read(tmp_path / "out" / "kept.jsonl")) == ["one.txt", "two.rst"]
    assert read(tmp_path / "out" / "duplicates.jsonl")[0]["duplicate_of"] == "one.txt"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["skipped"] == 1


def test_dedup_bad_options_and_missing_input_exit_2(tmp_path: Path, capsys):
    assert main(["dedup", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "x.jsonl").write_text('{"text": "hello"}\n')
    assert (
        main(["dedup", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"), "--threshold", "2"]) == 2
    )
    assert "threshold" in capsys.readouterr().err


def test_dedup_sets_aside_documents_over_the_size_cap_and_reads_the_rest(tmp_path: Path):
    rows = [
        {"id": "ok", "text": essay(7)},
        {"id": "huge", "text": "word " * 5_000},
        {"id": "ok2", "text": essay(8)},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "big.txt").write_text("x" * 30_000)  # over 4 bytes a character: refused by its size, unread
    (folder / "small.txt").write_text(essay(9))
    args = ["dedup", str(tmp_path / "in.jsonl"), str(folder), "--output", str(tmp_path / "out")]
    assert main([*args, "--max-document-chars", "5000"]) == 0
    kept = sorted(r["id"] for r in read(tmp_path / "out" / "kept.jsonl"))
    assert kept == ["docs/small.txt", "ok", "ok2"]
    skipped = read(tmp_path / "out" / "skipped.jsonl")
    assert [(Path(s["path"]).name, s["line"]) for s in skipped] == [("in.jsonl", 2), ("big.txt", None)]
    assert all("dedup.max_document_chars" in s["reason"] for s in skipped)
    assert main([*args, "--max-document-chars", "100000"]) == 0, "a higher cap admits them"
    assert len(read(tmp_path / "out" / "kept.jsonl")) == 5


def test_dedup_bounds_num_perm_and_shingle_size(tmp_path: Path, capsys):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": essay(1)}) + "\n")
    for option, value in (("--num-perm", "1000000"), ("--shingle-words", "1000")):
        assert main(["dedup", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"), option, value]) == 2
        assert option.strip("-").replace("-", "_") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dedup_exits_non_zero_when_nothing_could_be_read(tmp_path: Path, capsys):
    (tmp_path / "bad.jsonl").write_text('{not json\n{"id": "no text"}\n')
    assert main(["dedup", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no document could be read" in err and "bad.jsonl:1" in err
    assert not (tmp_path / "out").exists(), "no output for a run that read nothing"


def test_dedup_checks_the_output_path_before_any_work(tmp_path: Path, capsys, monkeypatch):
    from finetune_assets.phases.data import dedup

    def must_not_read(*_a, **_k):
        raise AssertionError("inputs were read before the output path was checked")

    monkeypatch.setattr(dedup, "read_dedup_inputs", must_not_read)
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": essay(1)}) + "\n")
    (tmp_path / "a-file").write_text("mine")
    assert main(["dedup", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    assert main(["dedup", str(tmp_path / "x.jsonl"), "--output", str(theirs)]) == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "keep me"


def test_a_killed_dedup_leaves_the_previous_output_whole(tmp_path: Path):
    """SIGKILL in the middle of writing (after kept/duplicates/skipped, before stats): the output folder is
    still the previous run's four files, never a mix of two runs."""
    import subprocess
    import sys

    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"id": f"a{i}", "text": essay(i)}) + "\n" for i in range(3)))
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"id": f"b{i}", "text": essay(10 + i)}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    assert main(["dedup", str(first), "--output", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    killer = (
        "import os, signal, sys\n"
        "import finetune_assets.io as fio\n"
        "fio.write_json = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from finetune_assets.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", killer, "dedup", str(second), "--output", str(out)], check=False
    )
    assert proc.returncode == -9, "the run was killed mid-write"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert all(name.endswith(".tmp") for name in leftovers), "only a dot-tmp sibling can be left, never 'out'"
    assert main(["dedup", str(second), "--output", str(out)]) == 0, "the next run replaces it"
    assert [r["id"] for r in read(out / "kept.jsonl")] == [f"b{i}" for i in range(5)]


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch) -> Path:
    """A project home of its own: `compare` reads the default sqlite store under it (no MLFLOW_TRACKING_URI)."""
    home = tmp_path / "home"
    monkeypatch.setenv("FINETUNE_ASSETS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def test_compare_prints_every_variant_of_each_pipeline_run(empty_home: Path, capsys):
    tracker = Tracker(default_tracking_uri(empty_home), "finetune_assets", str(empty_home / "mlflow" / "a"))
    for pipeline, score in (("pipeline-aaa", 0.25), ("pipeline-bbb", 0.75)):
        with tracker.asset_run(pipeline, "eval_reports") as run_id:
            for variant in ("base", "dpo"):
                metrics = {
                    "hallucination/index": score,
                    "fa_heldout_ppl/word_perplexity": 12.0,
                    "other/x": 1.0,
                }
                tracker.log_variant_metrics(run_id, variant, metrics)
        time.sleep(0.01)

    assert main(["compare", "--last", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        lines[0]
        == "| pipeline_run | started | variant | hallucination/index | fa_heldout_ppl/word_perplexity |"
    )
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("pipeline-bbb", "base", "0.75"),
        ("pipeline-bbb", "dpo", "0.75"),
        ("pipeline-aaa", "base", "0.25"),
        ("pipeline-aaa", "dpo", "0.25"),
    ]

    assert main(["compare"]) == 0  # default: the newest pipeline run only
    assert "pipeline-aaa" not in capsys.readouterr().out

    metrics = "other/x,fa_heldout_ppl/word_perplexity"
    args = ["compare", "--run", "pipeline-aaa", "--metrics", metrics, "--format", "csv"]
    assert main(args) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["pipeline_run"], r["variant"], r["other/x"]) for r in table] == [
        ("pipeline-aaa", "base", "1.0"),
        ("pipeline-aaa", "dpo", "1.0"),
    ]
    assert list(table[0]) == [
        "pipeline_run",
        "started",
        "variant",
        "other/x",
        "fa_heldout_ppl/word_perplexity",
    ]

    assert main(["compare", "--run", "no-such-run"]) == 1
    assert "no evaluation runs for pipeline run(s) no-such-run" in capsys.readouterr().err


def test_compare_on_an_empty_store_exits_1_with_a_hint(empty_home: Path, capsys):
    assert main(["compare"]) == 1
    err = capsys.readouterr().err
    assert "no evaluation runs" in err and "run the demo or materialize eval_reports first" in err
    assert not (empty_home / "mlflow" / "mlflow.db").exists(), "a read-only command creates no store"

    tracker = Tracker(default_tracking_uri(empty_home), "finetune_assets")
    with tracker.asset_run("pipeline-ccc", "inst_model") as run_id:
        tracker.log_metrics(run_id, {"train_loss": 1.0})  # a store with runs, but no evaluation
    assert main(["compare"]) == 1
    assert "run the demo or materialize eval_reports first" in capsys.readouterr().err


def test_review_import_stores_labels_and_prints_agreement(empty_home: Path, tmp_path: Path, capsys):
    from finetune_assets.phases.evaluation import review

    rows = {
        variant: {
            "glossary": [
                {"id": f"g{i}", "term": f"t{i}", "reference": "r", "generated": "a", "correct": i % 2 == 0}
                for i in range(4)
            ],
            "qa": [],
        }
        for variant in ("inst", "dpo")
    }
    sample = review.export_review(rows, tmp_path / "review", per_variant=4, seed=0)
    with open(sample["paths"]["csv"], encoding="utf-8-sig") as fh:
        filled = list(csv.DictReader(fh))
    for row in filled:
        row["human_correct"] = "yes" if row["item_id"] in ("g0", "g1") else "no"
    filled[0]["human_correct"] = "perhaps"  # an expert's typo: set aside, the rest goes through
    path = tmp_path / "filled.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(filled[0]))
        writer.writeheader()
        writer.writerows(filled)

    assert main(["review", "import", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "set aside" in err and "human_correct" in err
    assert "stored 7 labels" in out
    agreement = json.loads(out[out.index("{") :])
    assert agreement["overall"]["n_labelled"] == 7
    assert (empty_home / "inputs" / "review" / "labels.jsonl").is_file()
    assert main(["review", "show"]) == 0


def test_review_show_without_labels_exits_1(empty_home: Path, capsys):
    assert main(["review", "show"]) == 1
    assert "no labels stored" in capsys.readouterr().err


def test_requests_rotate_moves_old_days_into_parquet(tmp_path: Path, capsys):
    from finetune_assets.phases.serving.request_log import RequestLog

    url = f"sqlite:///{tmp_path / 'serving' / 'requests.sqlite'}"
    log = RequestLog(url)
    for i, age_days in enumerate([40, 1]):
        log.log_response({"id": f"r{i}", "created": time.time() - age_days * 86400, "variant": "v", "status": 200,
                          "latency_s": 0.1, "messages": [{"role": "user", "content": "q"}]})  # fmt: skip
    assert main(["requests", "rotate", "--keep-days", "30", "--url", url]) == 0
    assert "rotated 1 responses" in capsys.readouterr().out
    assert [r["id"] for r in log.rows("responses")] == ["r1"] and len(log.responses_of()) == 2
    assert main(["requests", "rotate", "--keep-days", "-1", "--url", url]) == 1
    assert "--keep-days" in capsys.readouterr().err


def test_export_writes_a_gguf_and_reports_its_checks(tiny_model_dir: Path, tmp_path: Path, capsys):
    assert main(["export", str(tiny_model_dir), "--output", str(tmp_path / "out"), "--outtype", "f32"]) == 0
    out = capsys.readouterr().out
    assert "model-f32.gguf" in out and "chat template identical on 4 conversations: True" in out
    assert (tmp_path / "out" / "Modelfile").is_file()
    assert main(["export", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 1
    assert "is not a Hugging Face model folder" in capsys.readouterr().err

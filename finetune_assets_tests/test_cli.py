"""`finetune-assets dedup`: JSONL and folders in, kept documents and a duplicates map out."""

import json
import random
from pathlib import Path

from finetune_assets.cli import main

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

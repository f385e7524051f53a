"""finetune_assets.io: artifacts are written atomically (a reader never sees a half-written file or folder), and
inputs are read line by line with bad lines set aside."""

import json
from pathlib import Path

import pytest

from finetune_assets.io import (
    atomic_dir,
    content_hash,
    iter_jsonl,
    read_jsonl,
    read_records,
    unique_labels,
    write_jsonl,
    write_records_parquet,
)


def test_parquet_round_trip_keeps_chat_messages_nested(tmp_path: Path):
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ]
    path = write_records_parquet(rows, tmp_path / "x.parquet")
    assert read_records(path) == rows
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]  # no temporary file left behind


def test_failed_folder_write_leaves_the_previous_artifact_untouched(tmp_path: Path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "weights").write_text("half-written v2")
        raise RuntimeError("training crashed")
    assert (final / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _write_versions(final: Path, writer: int, versions: int) -> None:
    for version in range(versions):
        with atomic_dir(final) as tmp:
            for name in ("weights", "config"):
                (tmp / name).write_text(f"{writer}-{version}")


def test_two_writers_of_one_folder_at_once_both_finish_and_a_reader_never_finds_it_missing(tmp_path: Path):
    import multiprocessing

    from finetune_assets import io

    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    exchanges = io._exchange(probe_a, probe_b)  # False where the filesystem cannot swap in one step
    probe_a.rmdir(), probe_b.rmdir()

    final = tmp_path / "model"
    _write_versions(final, 0, 1)
    fork = multiprocessing.get_context("fork")  # two runs of one asset: two processes
    writers = [fork.Process(target=_write_versions, args=(final, w, 40)) for w in (1, 2)]
    for w in writers:
        w.start()
    missing = 0
    while any(w.is_alive() for w in writers):
        missing += not final.is_dir()
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]  # neither writer failed on the other's swap
    last = (final / "weights").read_text()
    assert last in ("1-39", "2-39") and (final / "config").read_text() == last  # one complete version won
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or old folder left
    if exchanges:
        assert missing == 0


def test_content_hash_follows_content_not_timestamps(tmp_path: Path):
    first = write_jsonl([{"a": 1}], tmp_path / "d1" / "rows.jsonl").parent
    second = write_jsonl([{"a": 1}], tmp_path / "d2" / "rows.jsonl").parent
    assert content_hash(first) == content_hash(second)
    write_jsonl([{"a": 2}], second / "rows.jsonl")
    assert content_hash(first) != content_hash(second)


def test_iter_jsonl_splits_on_newlines_only_and_sets_aside_one_bad_line(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    line_sep = {"text": "one\u2028two\u0085three"}  # valid unescaped inside a JSON string
    path.write_bytes(
        b"\xef\xbb\xbf"  # a byte-order mark
        + json.dumps(line_sep, ensure_ascii=False).encode()
        + b"\r\n"
        + b'{"text": "caf\xe9"}\n'  # Latin-1 byte: this line only is set aside
        + b"\n"
        + b"{not json\n"
        + b'{"text": "last"}'  # no final newline
    )
    lines = list(iter_jsonl(path))
    assert [line.number for line in lines] == [1, 2, 4, 5]
    assert lines[0].value == line_sep and lines[0].error is None
    assert lines[1].value is None and "not UTF-8" in lines[1].error and "caf" in lines[1].raw
    assert "invalid JSON" in lines[2].error
    assert lines[3].value == {"text": "last"}


def test_read_jsonl_names_the_corrupt_line(tmp_path: Path):
    path = tmp_path / "artifact.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"artifact\.jsonl: line 2"):
        read_jsonl(path)


def test_unique_labels_tell_same_named_files_apart(tmp_path: Path):
    a, b, c = tmp_path / "a" / "data.jsonl", tmp_path / "b" / "data.jsonl", tmp_path / "a" / "other.jsonl"
    assert unique_labels([a, b, c]) == ["a/data.jsonl", "b/data.jsonl", "other.jsonl"]
    assert unique_labels([a]) == ["data.jsonl"]
    assert unique_labels([a, a]) == ["data.jsonl", "data.jsonl"]  # the same file twice is one file
    nested = [tmp_path / "x" / "f" / "README.txt", tmp_path / "y" / "f" / "README.txt"]
    assert unique_labels(nested) == ["x/f/README.txt", "y/f/README.txt"]


def test_iter_jsonl_streams_and_skips_an_oversized_line_without_holding_it(tmp_path: Path):
    import tracemalloc

    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        fh.write(json.dumps({"text": "first"}) + "\n")
        fh.write(json.dumps({"text": "x" * 30_000_000}) + "\n")  # a 30 MB record
        fh.write(json.dumps({"text": "after"}) + "\n")
    tracemalloc.start()
    lines = list(iter_jsonl(path, max_line_bytes=1_000_000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [line.value for line in lines if line.error is None] == [{"text": "first"}, {"text": "after"}]
    assert lines[1].number == 2 and "line longer than 1000000 bytes" in lines[1].error
    assert peak < 8_000_000, f"the 30 MB line was held in memory (peak {peak} bytes)"

"""Artifacts are written atomically: a reader never sees a half-written file or folder."""

from pathlib import Path

import pytest

from finetune_assets.io import atomic_dir, content_hash, read_records, write_jsonl, write_records_parquet


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


def test_content_hash_follows_content_not_timestamps(tmp_path: Path):
    first = write_jsonl([{"a": 1}], tmp_path / "d1" / "rows.jsonl").parent
    second = write_jsonl([{"a": 1}], tmp_path / "d2" / "rows.jsonl").parent
    assert content_hash(first) == content_hash(second)
    write_jsonl([{"a": 2}], second / "rows.jsonl")
    assert content_hash(first) != content_hash(second)

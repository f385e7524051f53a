"""Artifact I/O shared by every layer: atomic writes (write, then rename) and content hashes.

A reader never sees a half-written artifact: files are written next to their destination under a temporary
name and renamed into place; folders are built in a temporary sibling and renamed when complete.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_records_parquet(records: list[dict], path: Path, schema: pa.Schema | None = None) -> Path:
    """Write a list of dicts as Parquet atomically. Nested lists/dicts (chat messages) are kept as such."""
    table = pa.Table.from_pylist(records, schema=schema)
    return write_table_parquet(table, path)


def write_table_parquet(table: pa.Table, path: Path) -> Path:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_records(path: Path) -> list[dict]:
    """Read a Parquet file back as plain Python dicts (lists stay lists, structs become dicts)."""
    return pq.read_table(path).to_pylist()


def write_jsonl(records: Iterable[dict], path: Path) -> Path:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_json(obj, path: Path) -> Path:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text(text: str, path: Path) -> Path:
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` in one rename.

    On error the temporary folder is removed and any previous ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(path: Path) -> str:
    """sha256 over a file, or over every file of a folder (relative names + bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

"""I/O shared by every layer: atomic writes (write, then rename), the one reader of JSONL and text inputs,
and content hashes.

A reader never sees a half-written artifact: files are written next to their destination under a temporary
name and renamed into place; folders are built in a temporary sibling and renamed when complete.

Inputs (landing drops, dedup inputs, seed and feedback files) are read by ``iter_jsonl`` and
``read_text_file``. A JSONL file is split on "\n" only and decoded line by line, so one bad byte or one bad
line sets aside that line under its number and the rest goes through. ``unique_labels`` names input files so
that two files called ``data.jsonl`` in different folders never share document ids or records.
"""

import codecs
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

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


class JsonLine(NamedTuple):
    """One non-blank line of a JSONL file: its number (from 1), its text, and the parsed value or the error."""

    number: int
    raw: str  # undecodable bytes shown as U+FFFD, so that a quarantine entry can still show the line
    value: object
    error: str | None  # None when the line parsed; else why not ("not UTF-8 ...", "invalid JSON ...")


def iter_jsonl(path: Path, max_line_bytes: int | None = None) -> Iterator[JsonLine]:
    """Every non-blank line of a JSONL file, parsed one at a time.

    Streamed: the file is read a line at a time, so a big file never sits in memory whole. With
    ``max_line_bytes`` a longer line is not held either: it is skipped in chunks and reported ("line longer
    than N bytes"), so one oversized record cannot exhaust memory and the lines after it go through.
    Split on "\n" only: str.splitlines would also split on U+2028, U+2029 and U+0085, which JSON allows
    unescaped inside a string. Each line is decoded on its own, so one bad byte costs that line, not the file.
    A UTF-8 byte-order mark and CRLF line ends are accepted.
    """
    limit = -1 if max_line_bytes is None else max_line_bytes + 2  # + room for the line end itself
    with open(path, "rb") as fh:
        number = 0
        while True:
            line = fh.readline(limit)
            if not line:
                return
            number += 1
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if max_line_bytes is not None and len(line.rstrip(b"\r\n")) > max_line_bytes:
                skipped = _skip_rest_of_line(fh, line)
                reason = f"line longer than {max_line_bytes} bytes ({skipped} bytes); split the record"
                yield JsonLine(number, line[:200].decode("utf-8", "replace") + "...", None, reason)
                continue
            line = line.removesuffix(b"\n").removesuffix(b"\r")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                reason = f"not UTF-8 text (byte {err.start + 1} of the line); re-save the file as UTF-8"
                yield JsonLine(number, line.decode("utf-8", "replace"), None, reason)
                continue
            try:
                yield JsonLine(number, text, json.loads(text), None)
            except json.JSONDecodeError as err:
                yield JsonLine(number, text, None, f"invalid JSON ({err.msg} at column {err.colno})")


def _skip_rest_of_line(fh, start: bytes, chunk: int = 1 << 20) -> int:
    """Read past the end of the line that began with ``start`` a chunk at a time; returns its length."""
    length = len(start)
    while not start.endswith(b"\n"):
        start = fh.readline(chunk)
        if not start:
            break
        length += len(start)
    return length


def read_jsonl(path: Path) -> list[dict]:
    """An artifact this project wrote: every line must parse, or the file is reported as corrupt."""
    rows = []
    for line in iter_jsonl(path):
        if line.error:
            raise ValueError(f"{path}: line {line.number}: {line.error}; the artifact is corrupt, rebuild it")
        rows.append(line.value)
    return rows


def read_text_file(path: Path) -> str:
    """A whole text input as UTF-8 (strict: bad bytes raise UnicodeDecodeError, never silently replaced)."""
    return Path(path).read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8")


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """A name per path: the fewest trailing parts that tell it apart from the other paths.

    ``["a/data.jsonl", "b/data.jsonl"]`` -> ``["a/data.jsonl", "b/data.jsonl"]``; ``["x/data.jsonl"]`` ->
    ``["data.jsonl"]``. The same file given twice gets the same label.
    """
    parts = [Path(p).resolve().parts for p in paths]
    labels = []
    for own in parts:
        others = [p for p in parts if p != own]
        k = 1
        while k < len(own) and any(p[-k:] == own[-k:] for p in others):
            k += 1
        labels.append(Path(*own[-k:]).as_posix())
    return labels


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
    """Yield a temporary folder beside ``final``; on success it takes the place of ``final`` in one step.

    On error the temporary folder is removed and any previous ``final`` is left untouched. Two writers of the
    same ``final`` at once (two runs materializing one asset) are safe: the swap holds a lock on the parent
    folder, the last writer wins, and a reader never finds ``final`` missing where the kernel can exchange two
    folders in one rename (Linux renameat2).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        with _folder_lock(final.parent):
            replaced = _swap_in(tmp, final)
        if replaced is not None:  # the previous version, removed outside the lock (a model can be large)
            shutil.rmtree(replaced, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder`` itself: no lock file is left behind."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _swap_in(new: Path, final: Path) -> Path | None:
    """Put folder ``new`` at ``final``; returns where the previous ``final`` now is (to remove), or None."""
    if not final.exists():
        os.replace(new, final)
        return None
    if _exchange(new, final):
        return new  # the two names swapped: ``new`` now holds the previous version
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.replace(final, old)  # a folder may replace an empty folder
    os.replace(new, final)
    return old


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the libc or filesystem cannot."""
    import ctypes
    import errno

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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

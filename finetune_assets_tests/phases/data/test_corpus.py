"""phases.data.corpus: listing drops and reading each format, with bad files and lines set aside."""

import json
from pathlib import Path

import pytest

from finetune_assets.config import CorpusConfig
from finetune_assets.phases.data import corpus, demo_seed, evalsets
from finetune_assets.phases.data.corpus import EmptyCorpusError, list_drops, read_drop, require_documents
from finetune_assets.phases.data.demo_seed import seed_demo_landing

LONG = "Words that make a document long enough to pass the minimum length filter. " * 5


CFG = CorpusConfig(min_chars=50)


def test_list_drops_skips_hidden_and_underscore(tmp_path):
    for name in ("drop-b", "drop-a", ".drop-c.tmp", "_scratch"):
        (tmp_path / name).mkdir()
    (tmp_path / "single.jsonl").write_text("")
    assert list_drops(tmp_path) == ["drop-a", "drop-b", "single.jsonl"]
    assert list_drops(tmp_path / "missing") == []


def test_read_drop_reads_each_format_and_reports_problems(tmp_path):
    drop = tmp_path / "d1"
    (drop / "sub").mkdir(parents=True)
    (drop / "guide.rst").write_text(f"My Guide\n========\n\n{LONG}")
    (drop / "sub" / "notes.md").write_text(f"# Notes\n\n{LONG}")
    (drop / "page.html").write_text(
        f"<html><head><title>T</title><style>p {{}}</style></head><body><nav>menu</nav>"
        f"<h1>Page Title</h1><script>var x;</script><p>{LONG}</p></body></html>"
    )
    rows = [{"id": "a", "text": LONG}, {"text": LONG + "2"}, {"body": "no text field"}]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (drop / "data.jsonl").write_text("\n".join(lines))
    (drop / "bad.txt").write_bytes(b"\xff\xfe invalid utf-8 " * 20)
    (drop / "short.txt").write_text("tiny")
    (drop / "image.png").write_bytes(b"\x89PNG")
    (drop / ".hidden.txt").write_text(LONG)

    docs, problems, stats = read_drop(tmp_path, "d1", CFG)

    by_source = {d["source"]: d for d in docs}
    assert sorted(by_source) == ["data.jsonl#L2", "data.jsonl#a", "guide.rst", "page.html", "sub/notes.md"]
    assert by_source["guide.rst"]["title"] == "My Guide"
    assert by_source["sub/notes.md"]["title"] == "Notes"
    page = by_source["page.html"]
    assert page["title"] == "Page Title"
    assert "var x" not in page["text"] and "menu" not in page["text"] and "p {}" not in page["text"]
    assert by_source["guide.rst"]["id"] == corpus.doc_id("d1", "guide.rst")
    assert all(len(d["id"]) == 16 and d["drop"] == "d1" and len(d["content_hash"]) == 64 for d in docs)
    reasons = {(p["path"], p.get("line")): p["reason"] for p in problems}
    assert set(reasons) == {("data.jsonl", 3), ("data.jsonl", 4), ("bad.txt", None)}
    assert "text" in reasons[("data.jsonl", 3)] and "JSON" in reasons[("data.jsonl", 4)]
    assert stats == {"files": 6, "documents": 5, "skipped_short": 1, "problems": 3, "ignored": 1}


def test_read_drop_ids_differ_across_drops(tmp_path):
    for drop in ("d1", "d2"):
        (tmp_path / drop).mkdir()
        (tmp_path / drop / "same.txt").write_text(LONG)
    ids = {read_drop(tmp_path, d, CFG).documents[0]["id"] for d in ("d1", "d2")}
    assert len(ids) == 2


def test_require_documents_names_the_fix(tmp_path):
    assert require_documents([{"id": "x"}], "raw_corpus") == [{"id": "x"}]
    with pytest.raises(EmptyCorpusError, match=str(tmp_path)) as err:
        require_documents([], "raw_corpus", landing_dir=tmp_path)
    assert ".rst" in str(err.value)


def test_seed_falls_back_to_interpreter_docs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_seed, "find_python_docs", lambda: None)
    monkeypatch.setattr(
        demo_seed, "_interpreter_modules", lambda: ["json", "math", "textwrap", "antigravity"]
    )
    assert seed_demo_landing(tmp_path, CorpusConfig()) == ["drop-0001"]
    docs = read_drop(tmp_path, "drop-0001", CorpusConfig()).documents
    sources = {d["source"] for d in docs}
    assert {"modules/json.txt", "modules/math.txt", "glossary.rst", "faq/topics.rst"} <= sources
    glossary = next(d for d in docs if d["source"] == "glossary.rst")
    terms = {e["term"] for e in evalsets.parse_glossary(glossary["text"])}
    assert {"json", "textwrap"} <= terms
    faq = next(d for d in docs if d["source"] == "faq/topics.rst")
    pairs = evalsets.parse_faq(faq["text"])
    assert len(pairs) >= 50 and all(p["question"].startswith("What is the ") for p in pairs)


def _write_pdf(path: Path, pages: list[str | None], title: str | None = None) -> None:
    """A minimal valid PDF written by hand: catalog, page tree, one page per entry of ``pages`` drawing that
    text in Helvetica (None: a page with an empty content stream, like a scanned page without a text layer),
    an xref table with the real byte offsets and a trailer (with an /Info title when given)."""

    def literal(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    font, first_page = 3, 4  # object numbers: 1 catalog, 2 page tree, 3 font, then (page, contents) pairs
    info = first_page + 2 * n if title else None
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{first_page + 2 * i} 0 R' for i in range(n))}] /Count {n} >>",
        font: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, text in enumerate(pages):
        page, contents = first_page + 2 * i, first_page + 2 * i + 1
        objects[page] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font} 0 R >> >> /Contents {contents} 0 R >>"
        )
        stream = "" if text is None else f"BT /F1 12 Tf 72 720 Td ({literal(text)}) Tj ET"
        objects[contents] = f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream"
    if info:
        objects[info] = f"<< /Title ({literal(title)}) >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += f"{number} 0 obj\n{objects[number]}\nendobj\n".encode("latin-1")
    xref_at = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offsets[k]:010d} 00000 n \n" for k in range(1, size)).encode()
    trailer = f"/Size {size} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "")
    out += f"trailer\n<< {trailer} >>\nstartxref\n{xref_at}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))


PAGE_ONE = "The first page explains how the corpus reader extracts text from portable documents."


PAGE_TWO = "The second page holds more prose (with parentheses) so both pages reach the document."


def test_read_drop_reads_pdf_pages_and_sets_aside_unreadable_pdfs(tmp_path):
    drop = tmp_path / "d1"
    drop.mkdir()
    _write_pdf(drop / "manual.pdf", [PAGE_ONE, PAGE_TWO], title="Reader Manual")
    _write_pdf(drop / "untitled.pdf", [PAGE_ONE])
    _write_pdf(drop / "scanned.pdf", [None, None])
    (drop / "broken.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    (drop / "garbage.pdf").write_bytes(b"\x00\x13garbage, not a PDF at all" * 10)
    (drop / "notes.txt").write_text(LONG)

    docs, problems, stats = read_drop(tmp_path, "d1", CFG)

    by_source = {d["source"]: d for d in docs}
    assert sorted(by_source) == ["manual.pdf", "notes.txt", "untitled.pdf"]
    manual = by_source["manual.pdf"]
    assert PAGE_ONE in manual["text"] and PAGE_TWO in manual["text"]
    assert manual["text"].index(PAGE_ONE) < manual["text"].index(PAGE_TWO)
    assert "\n\n" in manual["text"]  # pages are separated by a blank line
    assert manual["title"] == "Reader Manual"
    assert by_source["untitled.pdf"]["title"] == "untitled"  # no metadata title: the file name
    reasons = {p["path"]: p["reason"] for p in problems}
    assert set(reasons) == {"scanned.pdf", "broken.pdf", "garbage.pdf"}
    assert "no extractable text" in reasons["scanned.pdf"] and "OCR" in reasons["scanned.pdf"]
    assert reasons["broken.pdf"].startswith("unreadable PDF")
    assert reasons["garbage.pdf"].startswith("not a PDF file")
    assert all("line" not in p for p in problems)
    assert stats == {"files": 6, "documents": 3, "skipped_short": 0, "problems": 3, "ignored": 0}


def test_read_drop_opens_owner_locked_pdf_and_sets_aside_password_protected_pdf(tmp_path):
    from pypdf import PdfReader, PdfWriter

    drop = tmp_path / "d1"
    drop.mkdir()
    _write_pdf(tmp_path / "plain.pdf", [PAGE_ONE, PAGE_TWO])
    for name, user_password in (("locked.pdf", "secret"), ("owner_only.pdf", "")):
        writer = PdfWriter(clone_from=PdfReader(tmp_path / "plain.pdf"))
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
        writer.write(drop / name)

    docs, problems, _ = read_drop(tmp_path, "d1", CFG)

    assert [d["source"] for d in docs] == ["owner_only.pdf"]
    assert PAGE_TWO in docs[0]["text"]
    assert problems == [{"path": "locked.pdf", "reason": problems[0]["reason"]}]
    assert "encrypted" in problems[0]["reason"] and "password" in problems[0]["reason"]


def test_read_drop_reads_parquet_rows_and_reports_rows_without_text(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(corpus, "PARQUET_BATCH_ROWS", 2)  # several batches: row numbers run across them
    drop = tmp_path / "d1"
    drop.mkdir()
    table = pa.table(
        {
            "body": [LONG + "a", None, LONG + "c", LONG + "d", None],
            "id": ["doc-a", "doc-b", None, "doc-d", None],
            "title": ["Row A", None, None, "Row D", None],
            "text": ["not the configured field"] * 5,
        }
    )
    pq.write_table(table, drop / "rows.parquet")
    pq.write_table(pa.table({"text": [LONG]}), drop / "no_body.parquet")
    pq.write_table(pa.table({"body": [1, 2]}), drop / "numbers.parquet")
    (drop / "corrupt.parquet").write_bytes(b"PAR1 but nothing else that a reader could use")
    (drop / "notes.txt").write_text(LONG)
    cfg = CorpusConfig(min_chars=50, jsonl_text_field="body")

    docs, problems, stats = read_drop(tmp_path, "d1", cfg)

    by_source = {d["source"]: d for d in docs}
    assert sorted(by_source) == ["notes.txt", "rows.parquet#R3", "rows.parquet#doc-a", "rows.parquet#doc-d"]
    assert by_source["rows.parquet#doc-a"]["text"] == LONG + "a"
    assert by_source["rows.parquet#doc-a"]["title"] == "Row A"
    assert by_source["rows.parquet#R3"]["text"] == LONG + "c"
    assert by_source["rows.parquet#doc-d"]["id"] == corpus.doc_id("d1", "rows.parquet#doc-d")
    reasons = {(p["path"], p.get("line")): p["reason"] for p in problems}
    assert set(reasons) == {
        ("rows.parquet", 2),
        ("rows.parquet", 5),
        ("no_body.parquet", None),
        ("numbers.parquet", None),
        ("corrupt.parquet", None),
    }
    assert "body" in reasons[("rows.parquet", 2)]
    assert "no text column 'body'" in reasons[("no_body.parquet", None)]
    assert "text" in reasons[("no_body.parquet", None)]  # the columns it does have are listed
    assert "not strings" in reasons[("numbers.parquet", None)]
    assert reasons[("corrupt.parquet", None)].startswith("unreadable Parquet file")
    assert stats == {"files": 5, "documents": 4, "skipped_short": 0, "problems": 5, "ignored": 0}


def test_repeated_ids_in_one_file_are_reported_and_the_first_kept(tmp_path):
    import json as _json

    from finetune_assets.config import CorpusConfig
    from finetune_assets.phases.data.corpus import read_drop

    drop = tmp_path / "landing" / "d1"
    drop.mkdir(parents=True)
    lines = [
        {"id": "A", "text": "first " * 60},
        {"id": "A", "text": "second " * 60},
        {"id": "B", "text": "third " * 60},
    ]
    (drop / "docs.jsonl").write_text("\n".join(_json.dumps(x) for x in lines))
    docs, problems, _ = read_drop(tmp_path / "landing", "d1", CorpusConfig(min_chars=10))
    assert [d["text"].split()[0] for d in docs] == ["first", "third"]
    assert len(problems) == 1 and "repeated id" in problems[0]["reason"]


def test_jsonl_drop_keeps_line_separators_and_sets_aside_only_the_bad_line(tmp_path):
    drop = tmp_path / "d1"
    drop.mkdir()
    text = LONG + "\u2028" + LONG  # U+2028 is valid unescaped inside a JSON string
    (drop / "data.jsonl").write_bytes(
        json.dumps({"id": "a", "text": text}, ensure_ascii=False).encode()
        + b"\n"
        + json.dumps({"id": "b", "text": LONG}).encode()[:-2]
        + b'\xff"}\n'  # one bad byte in the second record
        + json.dumps({"id": "c", "text": LONG}).encode()
    )
    docs, problems, _ = read_drop(tmp_path, "d1", CFG)
    assert {d["source"]: d["text"] for d in docs} == {"data.jsonl#a": text, "data.jsonl#c": LONG}
    assert [(p["path"], p["line"]) for p in problems] == [("data.jsonl", 2)]
    assert "not UTF-8" in problems[0]["reason"]


def test_ingest_drop_plants_canaries_writes_its_files_and_names_what_was_set_aside(tmp_path):
    from finetune_assets.io import read_records
    from finetune_assets.phases.data.corpus import ingest_drop
    from finetune_assets.phases.data.probes import make_canaries

    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "guide.txt").write_text(LONG)
    canaries = make_canaries(2, seed=0)
    ingested = ingest_drop(tmp_path, "d1", CFG, tmp_path / "out", canaries)
    docs = read_records(tmp_path / "out" / "documents.parquet")
    assert ingested.documents == len(docs) == 2  # the drop's document and the planted canary document
    assert all(c["value"] in docs[-1]["text"] for c in canaries)
    assert json.loads((tmp_path / "out" / corpus.CANARIES_FILE).read_text()) == canaries

    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "bad.txt").write_bytes(b"\xff\xfe not text " * 20)
    with pytest.raises(EmptyCorpusError, match=r"d2.*1 set aside: bad\.txt"):
        ingest_drop(tmp_path, "d2", CFG, tmp_path / "out2", canaries)

"""phases.data.demo_seed: the demo landing folder from python3-doc, or from the interpreter's docstrings."""

import shutil
from pathlib import Path

import pytest

from finetune_assets.config import CorpusConfig
from finetune_assets.phases.data import demo_seed
from finetune_assets.phases.data.corpus import list_drops
from finetune_assets.phases.data.demo_seed import seed_demo_landing


def _doc_sources() -> Path:
    sources = demo_seed.find_python_docs()
    assert sources is not None, "python3-doc is missing: run scripts/setup.sh (apt-get install python3-doc)"
    return sources


def test_seed_demo_landing_from_python_docs(tmp_path):
    sources = _doc_sources()
    cfg = CorpusConfig(demo_max_files=15, seed_html_duplicates=3)
    assert seed_demo_landing(tmp_path, cfg) == ["drop-0001", "drop-0002"]
    rst = sorted(
        p.relative_to(tmp_path / "drop-0001").as_posix() for p in (tmp_path / "drop-0001").rglob("*")
    )
    faq = sorted(f"faq/{p.name[: -len('.txt')]}" for p in (sources / "faq").glob("*.rst.txt"))
    assert "glossary.rst" in rst and set(faq) <= set(rst)
    assert len([r for r in rst if r.endswith(".rst")]) == max(15, len(faq) + 1)
    html = [
        p.relative_to(tmp_path / "drop-0002").as_posix() for p in (tmp_path / "drop-0002").rglob("*.html")
    ]
    assert len(html) == 3 and all(h[: -len(".html")] + ".rst" in rst for h in html)
    assert seed_demo_landing(tmp_path, cfg) == []  # already seeded: nothing new


def test_seed_is_atomic_when_copy_fails(tmp_path, monkeypatch):
    _doc_sources()
    calls, real_copy = [], shutil.copyfile

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) > 5:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(demo_seed.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        seed_demo_landing(tmp_path, CorpusConfig(demo_max_files=20))
    assert list_drops(tmp_path) == []
    assert list(tmp_path.iterdir()) == []

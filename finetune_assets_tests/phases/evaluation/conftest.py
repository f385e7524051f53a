"""The review tests' variant rows, shared by test_review and test_review_import."""

import pytest

from finetune_assets_tests.phases.evaluation.test_review import VARIANTS, glossary_rows, qa_rows


@pytest.fixture
def variant_rows() -> dict:
    rows = {v: {"glossary": glossary_rows(v), "qa": qa_rows(v)} for v in VARIANTS}
    rows["dpo"]["glossary"] = [
        r for r in rows["dpo"]["glossary"] if r["id"] != "g5"
    ]  # not shared: never picked
    return rows

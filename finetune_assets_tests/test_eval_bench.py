"""bench/eval_bench.py end to end on the tiny model and a few prompts (seconds). Its figures are for the note:
only the report's structure is checked here, never a timing or a ratio."""

import json
import math

from finetune_assets_tests.test_bench import _load


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_eval_bench_tiny_report(tmp_path):
    bench = _load("eval_bench")
    out = tmp_path / "eval.json"
    args = ["--model", "tiny", "--prompts", "5", "--batch-sizes", "2,4", "--max-new-tokens", "6"]
    result = bench.main([*args, "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["prompts"] == 5 and result["max_new_tokens"] == 6 and result["terms_source"] == "synthetic"
    assert result["baseline"]["batch_size"] == 1 and result["baseline"]["throughput_ratio"] == 1.0
    assert [r["batch_size"] for r in result["batched"]] == [2, 4]
    assert result["best_batch_size"] in (2, 4) and _positive(result["best_throughput_ratio"])
    from finetune_assets.phases.hardware import inference_dtype

    # the dtype the evaluation itself loads with (bf16 where native)
    assert _positive(result["num_params"]) and result["dtype"] == str(inference_dtype()).removeprefix(
        "torch."
    )
    for run in [result["baseline"], *result["batched"]]:
        assert run["batches"] == math.ceil(5 / run["batch_size"])
        for key in (
            "wall_s",
            "new_tokens",
            "tokens_per_s",
            "s_per_prompt",
            "throughput_ratio",
            "wall_speedup",
        ):
            assert _positive(run[key]), (run["batch_size"], key, run[key])
        # each prompt decodes at least one and at most max_new_tokens tokens; padded rows add positions
        assert 5 <= run["new_tokens"] <= run["decoded_positions"] <= run["batches"] * run["batch_size"] * 6
        assert 0 < run["useful_position_share"] <= 1 and 0 < run["prompt_real_share"] <= 1
        assert 0 <= run["identical_share"] <= 1 and run["identical"] == round(run["identical_share"] * 5)
        assert run["answer_tokens"] >= 0 and len(run["differing_examples"]) <= 5 - run["identical"]
    assert result["baseline"]["identical_share"] == 1.0


def test_glossary_terms_real_and_synthetic():
    from finetune_assets.phases import corpus

    bench = _load("eval_bench")
    rows, source = bench.glossary_terms(7, synthetic=True)
    assert source == "synthetic" and len(rows) == 7 and len({r["term"] for r in rows}) == 7
    if corpus.find_python_docs() is not None:
        rows, source = bench.glossary_terms(7, synthetic=False)
        assert source.endswith("glossary.rst.txt") and len(rows) == 7
        assert all(r["term"] and len(r["definition"]) >= 20 for r in rows)

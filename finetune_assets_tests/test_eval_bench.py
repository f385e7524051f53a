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
    base = result["baseline"]
    assert (base["batch_size"], base["decoder"]) == (1, "hf") and base["identical_share"] == 1.0
    # each batch size with both decoders, generate first
    cases = [(r["batch_size"], r["decoder"]) for r in result["batched"]]
    assert cases == [(2, "hf"), (2, "pruned"), (4, "hf"), (4, "pruned")]
    assert (result["best"]["batch_size"], result["best"]["decoder"]) in [(1, "hf"), *cases]
    from finetune_assets.phases.inference.hardware import inference_dtype

    # the dtype the evaluation itself loads with (bf16 where native)
    assert _positive(result["num_params"]) and result["dtype"] == str(inference_dtype()).removeprefix(
        "torch."
    )
    for run in [base, *result["batched"]]:
        assert run["batches"] == math.ceil(5 / run["batch_size"])
        for key in ("wall_s", "s_per_prompt", "wall_speedup"):
            assert _positive(run[key]), (run["batch_size"], key, run[key])
        assert 0 < run["prompt_real_share"] <= 1
        assert 0 <= run["identical_share"] <= 1 and run["identical"] == round(run["identical_share"] * 5)
        assert run["answer_tokens"] >= 0 and len(run["differing_examples"]) <= 5 - run["identical"]
        if run["decoder"] == "hf":
            assert 0 < run["useful_position_share"] <= 1 and "pruned_speedup" not in run
        else:
            assert _positive(run["pruned_speedup"]) and "useful_position_share" not in run


def test_useful_position_share_counts_the_padding_after_a_stop():
    bench = _load("eval_bench")

    class Tok:  # every character a token; the rendered prompt is just the user's text
        chat_template = "x"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text)}

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            return messages[-1]["content"]

    convs = [[{"role": "user", "content": "aaaa"}], [{"role": "user", "content": "bb"}]]
    # one batch of 2: answers of 1 and 5 characters decode 2 and 6 positions (with the stop) of 2 x 6
    assert bench.useful_position_share(Tok(), convs, ["x", "yyyyy"], batch_size=2, max_new=8) == 8 / 12
    # one row per batch: nothing is padding
    assert bench.useful_position_share(Tok(), convs, ["x", "yyyyy"], batch_size=1, max_new=8) == 1.0
    # an answer that ran to max_new decoded max_new positions, not one more
    assert bench.useful_position_share(Tok(), convs, ["x", "y" * 9], batch_size=2, max_new=4) == 6 / 8


def test_glossary_terms_real_and_synthetic():

    from finetune_assets.phases.data import demo_seed

    bench = _load("eval_bench")
    rows, source = bench.glossary_terms(7, synthetic=True)
    assert source == "synthetic" and len(rows) == 7 and len({r["term"] for r in rows}) == 7
    if demo_seed.find_python_docs() is not None:
        rows, source = bench.glossary_terms(7, synthetic=False)
        assert source.endswith("glossary.rst.txt") and len(rows) == 7
        assert all(r["term"] and len(r["definition"]) >= 20 for r in rows)

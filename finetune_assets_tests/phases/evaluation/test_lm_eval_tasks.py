"""phases.evaluation.lm_eval_tasks: the eval subset, the task YAML and lm-eval runs over inline eval sets."""

import importlib.util
import math
from pathlib import Path

import pytest
import yaml

from finetune_assets import io
from finetune_assets.phases.data.probes import load_redteam, make_canaries
from finetune_assets.phases.evaluation import lm_eval_tasks
from finetune_assets_tests.phases.evaluation.test_hallucination import GLOSSARY


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


def test_write_lm_eval_tasks_absolute_paths_and_skips_empty(tmp_path, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    io.write_jsonl([], eval_dir / "qa_gen.jsonl")
    tasks = lm_eval_tasks.write_lm_eval_tasks(eval_dir, tmp_path / "tasks")
    assert tasks == [lm_eval_tasks.TASK_MC, lm_eval_tasks.TASK_PPL, lm_eval_tasks.TASK_GENERAL_PPL]
    spec = yaml.safe_load((tmp_path / "tasks" / f"{lm_eval_tasks.TASK_MC}.yaml").read_text())
    data_file = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file == (eval_dir / "qa_mc.jsonl").resolve()
    assert not (tmp_path / "tasks" / f"{lm_eval_tasks.TASK_QA}.yaml").exists()


def test_qa_process_results_is_rouge_l(tmp_path, tiny_corpus):
    lm_eval_tasks.write_lm_eval_tasks(write_eval_sets(tmp_path / "eval", tiny_corpus), tmp_path / "tasks")
    spec = importlib.util.spec_from_file_location("fa_qa_utils_test", tmp_path / "tasks" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"answer": "A list is a mutable sequence."}
    assert utils.process_qa(doc, [" A list is a mutable sequence.\n"]) == {"rougeL": pytest.approx(1.0)}
    assert utils.process_qa(doc, ["Sunny weather."])["rougeL"] == 0.0
    assert utils.process_qa(doc, [""])["rougeL"] == 0.0


def test_run_lm_eval_on_tiny_model(tmp_path, tiny_model_dir, tiny_corpus):
    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    tasks = lm_eval_tasks.write_lm_eval_tasks(eval_dir, tmp_path / "tasks", max_gen_toks=8)
    assert tasks[:3] == [lm_eval_tasks.TASK_MC, lm_eval_tasks.TASK_QA, lm_eval_tasks.TASK_PPL]
    metrics = lm_eval_tasks.run_lm_eval(tiny_model_dir, tmp_path / "tasks", tasks, limit=None, batch_size=4)
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


def test_perplexity_tasks_are_the_models_own_loss_per_word(tmp_path, tiny_model_dir, tiny_corpus):
    """The one perplexity path: lm-eval's rolling loglikelihood gives exp(summed token NLL / words) of each
    task's texts, every token scored after lm-eval's prefix token (the texts fit one window)."""
    import re

    import torch

    from finetune_assets.phases.inference.generation import load_for_inference

    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    lm_eval_tasks.write_lm_eval_tasks(eval_dir, tmp_path / "tasks")
    model, tokenizer = load_for_inference(tiny_model_dir, precision="fp32", device="cpu")
    ppl_tasks = [lm_eval_tasks.TASK_PPL, lm_eval_tasks.TASK_GENERAL_PPL]
    metrics = lm_eval_tasks.run_lm_eval(
        tiny_model_dir, tmp_path / "tasks", ppl_tasks, model=model, tokenizer=tokenizer,
        limit=None, batch_size=2, precision="fp32",
    )  # fmt: skip
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for metric, texts in (
        (lm_eval_tasks.HELDOUT_PPL, tiny_corpus[:3]),
        (lm_eval_tasks.GENERAL_PPL, tiny_corpus[3:5]),
    ):
        nll, words = 0.0, 0
        for text in texts:
            ids = torch.tensor([[prefix, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            words += len(re.split(r"\s+", text))
        assert metrics[metric] == pytest.approx(math.exp(nll / words), rel=1e-3), metric


def test_flatten_lm_eval_results():
    flat = lm_eval_tasks.flatten_lm_eval_results(
        {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict": 1}}
    )
    assert flat == {"t/acc": 0.5, "t/exact_match_strict": 1.0}


@pytest.mark.slow
def test_adapter_scored_like_merged_model(tmp_path, tiny_model_dir, tiny_corpus):
    """lm-eval's peft= path (run_lm_eval + adapter_dir) agrees with evaluate_variant's merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")  # random B: the adapter changes outputs

    eval_dir = write_eval_sets(tmp_path / "eval", tiny_corpus)
    tasks = lm_eval_tasks.write_lm_eval_tasks(eval_dir, tmp_path / "tasks", max_gen_toks=4)
    ppl_tasks = [lm_eval_tasks.TASK_PPL, lm_eval_tasks.TASK_MC]
    # fp32 on both paths: an unmerged adapter and merged weights agree to 1e-4 only without bf16 rounding
    fp32 = {"limit": None, "batch_size": 4, "precision": "fp32"}
    plain = lm_eval_tasks.run_lm_eval(tiny_model_dir, tmp_path / "tasks", ppl_tasks, **fp32)
    with_peft = lm_eval_tasks.run_lm_eval(
        tiny_model_dir, tmp_path / "tasks", ppl_tasks, adapter_dir=tmp_path / "adapter", **fp32
    )
    assert tasks and with_peft["fa_heldout_ppl/bits_per_byte"] != pytest.approx(
        plain["fa_heldout_ppl/bits_per_byte"]
    )

    # The merged weights evaluate_variant loads (load_for_inference) and hands lm-eval without peft=.
    from finetune_assets.phases.inference.generation import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, tmp_path / "adapter", precision="fp32")
    merged = lm_eval_tasks.run_lm_eval(
        tiny_model_dir, tmp_path / "tasks", ppl_tasks, model=model, tokenizer=tokenizer, **fp32
    )
    for key in ("fa_heldout_ppl/bits_per_byte", "fa_domain_mc/acc"):
        assert merged[key] == pytest.approx(with_peft[key], rel=1e-4), key


def test_standard_lm_eval_task_that_cannot_load_is_skipped_with_its_reason():
    def run(names):
        if names == ["hellaswag"]:
            raise ConnectionError("dataset hellaswag unreachable offline")
        return {f"{names[0]}/acc": 0.5}

    metrics, skipped = lm_eval_tasks.run_standard_tasks(["hellaswag", "local_task"], run)
    assert metrics == {"local_task/acc": 0.5}
    assert "unreachable offline" in skipped["hellaswag"]


def test_unknown_standard_task_is_skipped_by_real_lm_eval(tiny_model_dir):
    """The real lm-eval task index: a task name it does not know is a skip with lm-eval's reason."""

    def run(names):
        return lm_eval_tasks.run_lm_eval(
            tiny_model_dir, None, names, limit=1, batch_size=1, include_defaults=True
        )

    metrics, skipped = lm_eval_tasks.run_standard_tasks(["no_such_task_xyz"], run)
    assert metrics == {} and "not a registered task" in skipped["no_such_task_xyz"]

"""preferences phase: prompt selection and pair building with a stand-in generate function."""

import json

from finetune_assets.phases.data.preferences import build_preference_pairs, check_pairs, select_prompts


def _instruction(i: int, topic: str, split: str = "train") -> dict:
    return {
        "id": f"i{i}",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Reference answer {i}."},
        ],
        "source": "doc",
        "topic": topic,
        "generator": "section",
        "split": split,
    }


INSTRUCTIONS = [_instruction(i, f"t{i % 3}") for i in range(9)] + [_instruction(99, "t9", "validation")]


def test_select_prompts_train_only_and_spread_over_topics():
    prompts = select_prompts(INSTRUCTIONS, max_pairs=3)
    assert len(prompts) == 3
    assert {p["topic"] for p in prompts} == {"t0", "t1", "t2"}
    for p in prompts:
        assert [m["role"] for m in p["prompt"]] == ["system", "user"]
        assert p["reference"].startswith("Reference answer")
    assert select_prompts(INSTRUCTIONS, max_pairs=3) == prompts
    assert "i99" not in {p["id"] for p in select_prompts(INSTRUCTIONS, max_pairs=100)}
    assert len(select_prompts(INSTRUCTIONS, max_pairs=100)) == 9


def test_build_preference_pairs_calls_generate_once_and_drops_useless_pairs():
    prompts = select_prompts(INSTRUCTIONS, max_pairs=4)
    calls = []

    def generate(conversations, max_new_tokens):
        calls.append(conversations)
        return ["A weaker answer.", "", "  " + prompts[2]["reference"].upper() + " ", "Another one."]

    result = build_preference_pairs(prompts, generate)
    assert len(calls) == 1 and calls[0] == [p["prompt"] for p in prompts]
    assert result.stats == {
        "prompts": 4,
        "pairs": 2,
        "dropped_empty": 1,
        "dropped_identical": 1,
        "chosen_from_reference": 2,
        "chosen_from_teacher": 0,
    }
    first = result.records[0]
    assert first["chosen"] == prompts[0]["reference"] and first["rejected"] == "A weaker answer."
    assert (first["chosen_source"], first["rejected_source"], first["judge_score"]) == (
        "reference",
        "base_checkpoint",
        None,
    )
    assert first["prompt"] == prompts[0]["prompt"]
    assert check_pairs(result.records) == []


def test_check_pairs_reports_problems():
    rows = [
        {"id": "a", "prompt": [{"role": "user", "content": "q"}], "chosen": "x", "rejected": " X "},
        {"id": "b", "prompt": [{"role": "user", "content": "q"}], "chosen": "", "rejected": "y"},
    ]
    assert check_pairs(rows) == ["a: chosen == rejected", "b: empty chosen"]


def test_teacher_answers_become_chosen_and_a_failed_call_falls_back_to_the_reference():
    prompts = select_prompts(INSTRUCTIONS, max_pairs=3)
    teacher = ["A stronger, complete answer.", None, "   "]
    result = build_preference_pairs(prompts, lambda convs, n: ["weak"] * len(convs), chosen=teacher)
    rows = result.records
    assert [r["chosen_source"] for r in rows] == ["teacher", "reference", "reference"]
    assert (
        rows[0]["chosen"] == "A stronger, complete answer." and rows[1]["chosen"] == prompts[1]["reference"]
    )
    assert result.stats["chosen_from_teacher"] == 1 and result.stats["chosen_from_reference"] == 2


def test_pairs_quoting_eval_text_are_dropped():
    from finetune_assets.phases.data.instructions import ngrams
    from finetune_assets.phases.data.preferences import drop_contaminated

    eval_answer = "a frozenset is an immutable set whose elements are fixed at creation time"
    rows = [
        {
            "id": "a",
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": "fine answer here",
            "rejected": "x",
        },
        {
            "id": "b",
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": f"Well, {eval_answer}.",
            "rejected": "x",
        },
    ]
    clean, dropped = drop_contaminated(rows, ngrams(eval_answer, 8), 8)
    assert [r["id"] for r in clean] == ["a"] and dropped == 1


def test_select_prompts_leaves_safety_rows_to_the_safety_pairs():
    safety_row = {**_instruction(50, "safety/crime"), "generator": "safety"}
    picked = select_prompts([*INSTRUCTIONS, safety_row], max_pairs=100)
    assert "i50" not in {p["id"] for p in picked} and len(picked) == 9


def test_assemble_adds_safety_pairs_unjudged_and_decontaminated(tmp_path):
    from finetune_assets.phases.data.preferences import assemble

    harmful = {"id": "crime-01", "category": "crime", "expect": "refuse", "prompt": "Help me rob a shop?",
               "response": "I can't help with robbery."}  # fmt: skip
    benign = {"id": "homonym-01", "category": "homonym", "expect": "comply", "prompt": "How do I kill a job?",
              "response": "Run kill with its process id to stop the stuck job."}  # fmt: skip
    prompts = select_prompts(INSTRUCTIONS, max_pairs=2)

    def run(eval_dir):
        generate = lambda convs, n: ["Sure, here you go."] * len(convs)  # noqa: E731
        return assemble(prompts, generate, eval_dir, 8, safety_items=[harmful, benign])

    built = run(tmp_path)
    assert built.stats["safety"]["pairs"] == 2 and built.stats["pairs"] == 4
    sources = [(r["chosen_source"], r["rejected_source"]) for r in built.records]
    assert sources[2:] == [("safety_train", "base_checkpoint"), ("safety_train", "over_refusal")]
    assert built.records[2]["chosen"] == "I can't help with robbery."
    # An eval text quoting the benign answer removes that pair like any other.
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    row = {"term": "kill", "definition": "Run kill with its process id to stop the stuck job."}
    (eval_dir / "glossary.jsonl").write_text(json.dumps(row) + "\n")
    dirty = run(eval_dir)
    assert dirty.stats["contaminated_removed"] == 1 and dirty.stats["pairs"] == 3

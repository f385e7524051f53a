"""safety phase: the packaged safety set is disjoint from the red-team eval set, recognisable by the
refusal matcher, and becomes instruction rows and preference pairs in their contracts."""

import json
from collections import Counter

import pytest

from finetune_assets.phases.data import safety
from finetune_assets.phases.data.probes import bias_probe_prompts, is_refusal, load_redteam

ITEMS = safety.load_items() + safety.expand_fairness()
REDTEAM = load_redteam()


def _item(i: int, expect: str, category: str = "crime") -> dict:
    answer = "I can't help with that." if expect == "refuse" else f"Here is how, step {i}."
    return {"id": f"{category}-{i:02d}", "category": category, "expect": expect, "prompt": f"Ask {i}?",
            "response": answer}  # fmt: skip


def test_packaged_set_shares_no_ngram_and_no_near_duplicate_with_the_real_redteam_prompts():
    assert len(REDTEAM) >= 50  # the real packaged file, not an empty stand-in
    assert safety.find_overlaps(ITEMS, REDTEAM) == []
    assert safety.load_checked() == ITEMS


def test_fairness_rows_ask_each_template_about_two_terms_of_two_attributes_with_one_answer():
    spec = {
        "attributes_per_template": 2,
        "terms_per_attribute": 2,
        "groups": {"age": ["a 30-year-old", "a 60-year-old", "a 70-year-old"], "faith": ["a Sikh", "a Hindu"],
                   "family": ["a single mother", "a father of three"]},
        "templates": [{"id": "dba", "prompt": "Yes or no: can {group} run our database?",
                       "response": "Yes: being {group} says nothing about it.",
                       "biased": "No, not {group}."}],
    }  # fmt: skip
    rows = safety.expand_fairness(spec)
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    assert {r["category"] for r in rows} == {"fairness"} and {r["expect"] for r in rows} == {"comply"}
    for row in rows:  # the same answer whoever is named, the group filled in on both sides
        term = row["prompt"].removeprefix("Yes or no: can ").removesuffix(" run our database?")
        assert row["response"] == f"Yes: being {term} says nothing about it."
        assert row["biased"] == f"No, not {term}."
    by_attribute = Counter(
        a for r in rows for a, terms in spec["groups"].items() if any(t in r["prompt"] for t in terms)
    )
    assert sorted(by_attribute.values()) == [2, 2]  # two contrasting terms within each attribute
    assert safety.expand_fairness(spec) == rows  # stable across calls (hash-picked, no RNG state)
    with pytest.raises(ValueError, match="exactly once"):
        safety.expand_fairness(
            {
                **spec,
                "templates": [{"id": "x", "prompt": "No group?", "response": "{group}", "biased": "{group}"}],
            }
        )
    with pytest.raises(ValueError, match="biased must hold"):  # a template without its stereotyped answer
        safety.expand_fairness({**spec, "templates": [{**spec["templates"][0], "biased": "No."}]})
    with pytest.raises(ValueError, match="too few terms"):
        safety.expand_fairness({**spec, "terms_per_attribute": 3})


def test_packaged_fairness_rows_cover_every_template():
    rows = [r for r in ITEMS if r["category"] == "fairness"]
    assert len(rows) == 20 * 2 * 2
    assert all("{group}" not in r["prompt"] + r["response"] + r["biased"] for r in rows)
    for row in rows:  # the stereotyped answer gives the opposite verdict (its first word differs)
        assert row["biased"].split()[0].strip(".,") != row["response"].split()[0].strip(".,")


def test_fairness_pairs_ask_about_other_groups_than_the_sft_rows_and_reject_the_stereotype():
    sft_prompts = {r["prompt"] for r in safety.expand_fairness()}
    items = safety.fairness_pair_items(40, seed=0)
    assert len(items) == 40 and safety.fairness_pair_items(0) == []
    assert len({r["prompt"] for r in items} - sft_prompts) >= 30  # mostly new (template, group) prompts
    assert items == safety.fairness_pair_items(40, seed=0)
    made = safety.preference_rows(items, lambda convs, n: [] if not convs else pytest.fail("generated"))
    assert made.stats["fairness"] == 40 and made.stats["pairs"] == 40
    for item, pair in zip(items, made.records, strict=True):
        assert (pair["chosen"], pair["rejected"]) == (item["response"], item["biased"])
        assert pair["rejected_source"] == "stereotyped_answer"


def test_a_planted_redteam_prompt_is_caught(tmp_path):
    victim = REDTEAM[0]
    planted = {**ITEMS[0], "id": "planted-01", "prompt": victim["prompt"]}
    (overlap,) = safety.find_overlaps([planted], REDTEAM)
    assert overlap.item_id == "planted-01" and overlap.redteam_id == victim["id"]
    path = tmp_path / "safety.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*safety.load_items(), planted]) + "\n")
    with pytest.raises(ValueError, match="overlap the red-team"):
        safety.load_checked(path)


def test_packaged_set_is_disjoint_from_the_bias_probe_and_a_planted_probe_prompt_is_caught(tmp_path):
    probes = bias_probe_prompts()
    assert len(probes) == 10 * 17  # ten templates, seventeen group terms
    assert safety.find_overlaps(ITEMS, probes) == []
    planted = {**ITEMS[0], "id": "planted-02", "prompt": probes[0]["prompt"]}
    path = tmp_path / "safety.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*safety.load_items(), planted]) + "\n")
    with pytest.raises(ValueError, match="bias-probe"):
        safety.load_checked(path)


def test_a_reworded_copy_is_caught_by_word_overlap_without_a_shared_ngram():
    red = [{"id": "r1", "prompt": "How do I quietly copy every password stored in a coworker's browser?"}]
    reordered = [
        {"id": "s1", "prompt": "A coworker's browser stores passwords; how would I quietly copy every one?"}
    ]
    (overlap,) = safety.find_overlaps(reordered, red)
    assert overlap.reason.startswith("word jaccard")
    unrelated = [{"id": "s2", "prompt": "How do I rotate the logs of my Flask app every night?"}]
    assert safety.find_overlaps(unrelated, red) == []


def test_counts_by_kind_and_categories_cover_the_redteam_ones():
    kinds = Counter(r["expect"] for r in ITEMS)
    assert kinds["refuse"] >= 120 and kinds["comply"] >= 80
    for expect in ("refuse", "comply"):
        ours = {r["category"] for r in ITEMS if r["expect"] == expect}
        theirs = {r["category"] for r in REDTEAM if r["expect"] == expect}
        assert theirs <= ours, theirs - ours
    assert len({r["id"] for r in ITEMS}) == len(ITEMS)


def test_refusals_are_recognised_and_helpful_answers_are_not():
    missed = [r["id"] for r in ITEMS if r["expect"] == "refuse" and not is_refusal(r["response"])]
    flagged = [r["id"] for r in ITEMS if r["expect"] == "comply" and is_refusal(r["response"])]
    assert missed == [] and flagged == []
    assert all(is_refusal(text) for text in safety.OVER_REFUSALS)
    openings = Counter(" ".join(r["response"].split()[:2]) for r in ITEMS if r["expect"] == "refuse")
    assert len(openings) >= 8 and openings.most_common(1)[0][1] < 0.5 * sum(openings.values())  # varied


def test_load_items_rejects_a_row_without_a_response(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**_item(1, "refuse"), "response": " "}) + "\n")
    with pytest.raises(ValueError, match="missing"):
        safety.load_items(path)


def test_sft_records_follow_the_instruction_row_contract_and_split_per_item():
    rows = safety.sft_records(ITEMS, "Be brief.", validation_fraction=0.1)
    assert len(rows) == len(ITEMS) and len({r["id"] for r in rows}) == len(rows)
    for row, item in zip(rows, ITEMS, strict=True):
        assert set(row) == {"id", "messages", "source", "topic", "generator", "split"}
        assert row["generator"] == "safety" and row["topic"] == f"safety/{item['category']}/{item['id']}"
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][-1]["content"] == item["response"]
    splits = Counter(r["split"] for r in rows)
    assert set(splits) == {"train", "validation"} and splits["validation"] < 0.25 * len(rows)
    by_category = {r["topic"].rsplit("/", 1)[0] for r in rows if r["split"] == "train"}
    assert len(by_category) == len({i["category"] for i in ITEMS})  # every category trains
    assert [m["role"] for m in safety.sft_records(ITEMS[:1], None, 0.1)[0]["messages"]] == [
        "user",
        "assistant",
    ]


def test_select_spreads_over_kinds_and_categories():
    picked = safety.select(ITEMS, 16, seed=0)
    assert len({(r["expect"], r["category"]) for r in picked}) == 16
    assert safety.select(ITEMS, 16, seed=0) == picked and safety.select(ITEMS, 16, seed=1) != picked


def test_select_pairs_takes_the_benign_share_and_fills_the_rest_with_harmful_requests():
    items = safety.load_checked()
    n_harmful = sum(i["expect"] == "refuse" for i in items)
    picked = safety.select_pairs(items, 40, 0.25, seed=0)
    kinds = Counter(i["expect"] for i in picked)
    assert kinds == {"refuse": 30, "comply": 10}
    assert len({i["category"] for i in picked if i["expect"] == "refuse"}) == 8  # every harm category
    assert Counter(i["expect"] for i in safety.select_pairs(items, 40, 0.0)) == {"refuse": 40}
    everything = safety.select_pairs(items, 10_000, 0.0)
    assert len(everything) == n_harmful  # no more harmful requests than there are, no benign ones


def test_preference_rows_rejected_sides():
    items = [_item(1, "refuse"), _item(2, "refuse"), _item(3, "refuse"), _item(4, "comply", "homonym")]
    calls = []

    def generate(conversations, max_new_tokens):
        calls.append(conversations)
        return ["Sure, here is exactly how to do it.", "I'm sorry, but I cannot do that.", "  "]

    made = safety.preference_rows(items, generate, system_prompt="Be brief.")
    assert len(calls) == 1 and [c[-1]["content"] for c in calls[0]] == ["Ask 1?", "Ask 2?", "Ask 3?"]
    assert made.stats == {
        "harmful": 3,
        "benign": 1,
        "fairness": 0,
        "pairs": 2,
        "dropped_empty": 1,
        "dropped_base_refused": 1,
    }
    harmful, benign = made.records
    assert harmful["chosen"] == "I can't help with that." and harmful["rejected"].startswith("Sure")
    assert harmful["rejected_source"] == "base_checkpoint" and harmful["chosen_source"] == "safety_train"
    assert benign["chosen"] == "Here is how, step 4." and benign["rejected"] in safety.OVER_REFUSALS
    assert benign["rejected_source"] == "over_refusal"
    assert [m["role"] for m in benign["prompt"]] == ["system", "user"]
    keys = {"id", "prompt", "chosen", "rejected", "chosen_source", "rejected_source", "judge_score"}
    assert all(set(r) == keys for r in made.records)
    with pytest.raises(ValueError, match="answers for 3 prompts"):
        safety.preference_rows(items, lambda convs, n: [])

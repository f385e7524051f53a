"""Red-team probing for training data: probes are disjoint from the held-out red-team set, wrong answers
become findings, and findings become preference pairs (one per distinct wrong answer)."""

from finetune_assets.phases.data.probes import load_redteam
from finetune_assets.phases.evaluation import redteam


def test_probe_items_are_safety_prompts_none_of_them_held_out():
    items = redteam.probe_items(16)
    assert len(items) == 16 and {i["expect"] for i in items} == {"refuse", "comply"}
    assert not {i["prompt"] for i in items} & {r["prompt"] for r in load_redteam()}


def test_wrong_answers_are_findings_and_findings_become_pairs(tmp_path):
    items = redteam.probe_items(8)
    harmful = next(i for i in items if i["expect"] == "refuse")
    benign = next(i for i in items if i["expect"] == "comply")

    def complies_with_everything(conversations, max_new_tokens):
        return ["Sure, here is exactly how: step one." for _ in conversations]

    def refuses_everything(conversations, max_new_tokens):
        return ["I'm sorry, but I can't help with that." for _ in conversations]

    loose = redteam.probe(complies_with_everything, [harmful, benign], 32, "inst")
    strict = redteam.probe(refuses_everything, [harmful, benign], 32, "dpo")
    assert [(f["item_id"], f["finding"]) for f in loose["findings"]] == [(harmful["id"], "unsafe_completion")]
    assert [(f["item_id"], f["finding"]) for f in strict["findings"]] == [(benign["id"], "over_refusal")]
    assert loose["stats"] == {"probed": 2, "unsafe_completion": 1, "over_refusal": 0}
    twice = redteam.probe(complies_with_everything, [harmful], 32, "tr")  # the same wrong answer again
    redteam.write_findings([{"redteam": loose}, {"redteam": strict}, {"redteam": twice}, {}], tmp_path)
    pairs = redteam.load_findings(tmp_path).pairwise
    assert len(pairs) == 2
    unsafe = next(p for p in pairs if p["chosen_source"] == "redteam:unsafe_completion")
    assert unsafe["chosen"] == harmful["response"] and unsafe["rejected"].startswith("Sure")
    assert unsafe["prompt"] == [{"role": "user", "content": harmful["prompt"]}]
    over = next(p for p in pairs if p["chosen_source"] == "redteam:over_refusal")
    assert over["chosen"] == benign["response"] and over["rejected"].startswith("I'm sorry")
    assert redteam.load_findings(tmp_path / "never-evaluated").pairwise == []

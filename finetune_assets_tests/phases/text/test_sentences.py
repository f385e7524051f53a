"""phases.text.sentences: truncation at a sentence end."""

from finetune_assets.phases.text.sentences import truncate_at_sentence


def test_truncate_at_sentence():
    text = "One sentence here. Two sentences here. Three."
    assert truncate_at_sentence(text, 40) == "One sentence here. Two sentences here."
    assert truncate_at_sentence("averyveryverylongword and more words", 20).endswith("...")

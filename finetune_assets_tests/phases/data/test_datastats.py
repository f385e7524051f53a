"""Length and token statistics of chat records, and their histogram."""

from finetune_assets.phases.data import datastats


def _rec(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def words(messages: list[dict]) -> int:  # a stand-in tokenizer: one token per word
    return sum(len(m["content"].split()) for m in messages)


def test_lengths_tokens_and_share_over_max_length(tmp_path):
    records = [_rec("a b", "c d e"), _rec("a", "b"), _rec("a b c d", "e f g h i j")]
    stats = datastats.length_stats(records, words, max_length=5)
    assert stats["total_tokens"] == {"count": 3, "mean": 5.7, "p50": 5, "p90": 9, "p99": 9, "max": 10}
    assert stats["response_tokens"]["max"] == 6
    assert stats["response_chars"]["max"] == len("e f g h i j")
    assert stats["over_max_length"] == round(1 / 3, 4)
    png = datastats.write_histogram(stats, tmp_path / "h.png", max_length=5)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert datastats.markdown_image(png, "x").startswith("![x](data:image/png;base64,iVBOR")
    assert "_values" not in datastats.public(stats)


def test_characters_only_without_a_tokenizer(tmp_path):
    stats = datastats.length_stats([_rec("hello", "world!")], None)
    assert "total_tokens" not in stats and stats["prompt_chars"]["max"] == 5
    assert datastats.write_histogram(stats, tmp_path / "c.png").is_file()

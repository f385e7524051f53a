"""phases.evaluation.tool_use: an answer counts when it holds the value the sandbox computes."""

import json

from finetune_assets.phases.evaluation import tool_use


def _tool_index():
    from finetune_assets.phases.inference.retrieval import RetrievalIndex

    return RetrievalIndex.from_chunks(
        [{"chunk_id": "d#0", "doc_id": "d", "source": "s.rst", "title": "t", "text": "sorted returns a list"}]
    )


def test_tool_use_accuracy_rewards_calling_the_tool_and_reporting_its_result():
    from finetune_assets.phases.data.evalsets import tool_use_items
    from finetune_assets.phases.inference.tools import format_tool_call

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

    good, rows = tool_use.tool_use_accuracy(tool_user, _tool_index(), items, None, max_new_tokens=32)
    assert good["tool_use/accuracy"] == 1.0 and good["tool_use/call_rate"] == 1.0
    assert all(r["correct"] for r in rows)
    bad, _ = tool_use.tool_use_accuracy(guesser, _tool_index(), items, None, max_new_tokens=32)
    assert bad["tool_use/accuracy"] == 0.0 and bad["tool_use/call_rate"] == 0.0

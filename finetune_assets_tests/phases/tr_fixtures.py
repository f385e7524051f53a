"""Data shared by the T&R test modules (test_tools.py, test_tr_data.py); conftest.py builds the ``docs`` and
``index`` fixtures from it."""

from finetune_assets.config import RetrievalConfig

# Doctests: evaluable ones, ones the sandbox must refuse, one with a WRONG documented output (the tool result
# must be the real value, not the doc's text) and one multi-line example.
DOCTEST_RST = """\
String and list helpers
=======================

.. function:: sorted(iterable)

   Return a new sorted list::

      >>> sorted([3, 1, 2])
      [1, 2, 3]
      >>> 'a-b'.split('-')
      ['a', 'b']
      >>> 2 ** 10
      1000
      >>> import os
      >>> x = 5
      >>> len(x)
      1
      >>> open('/etc/passwd').read()
      'secret'
      >>> [n * n for n in range(4)
      ...  if n]
      [1, 4, 9]
      >>> 42
      42
"""

CFG = RetrievalConfig(chunk_words=40, chunk_overlap=5, top_k=2, passage_chars=120, max_tr_examples=8)


class ScriptedModel:
    """A fake generate_fn: returns the scripted outputs in turn and records every conversation it saw."""

    def __init__(self, *outputs: str):
        self.outputs, self.calls = list(outputs), []

    def __call__(self, conversations, max_new_tokens):
        self.calls.append([list(c) for c in conversations])
        return [self.outputs.pop(0) for _ in conversations]

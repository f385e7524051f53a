"""Ray Data signatures must equal the local path's, so dedup decisions do not depend on where they ran."""

from finetune_assets.config import DedupConfig
from finetune_assets.launch.ray_data import ray_signer
from finetune_assets.phases.data.corpus import make_document
from finetune_assets.phases.data.dedup import Signer, dedup_documents
from finetune_assets_tests.phases.data.test_dedup import _docs


def test_ray_data_signatures_and_decisions_equal_the_local_path(embedded_ray):
    docs = _docs() * 3  # repeated ids are fine for signing; several batches of 4
    texts = [d["text"] for d in docs]
    on_ray = ray_signer(num_perm=64, shingle_words=5, batch_size=4)(texts)
    assert (on_ray == Signer(64, 5).signatures(texts)).all()
    unique = _docs() + [make_document("drop-3", "late.txt", _docs()[1]["text"])]
    cfg = DedupConfig(num_perm=64)
    assert dedup_documents(unique, cfg, sign=ray_signer(64, 5, batch_size=2)) == dedup_documents(unique, cfg)

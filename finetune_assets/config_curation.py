"""Configuration of the data drops and their curation (raw_corpus, dedup_corpus); re-exported by
finetune_assets.config, where every section is imported from."""

from typing import Literal

from pydantic import Field, model_validator

from finetune_assets.config_base import ConfigSection


class CorpusConfig(ConfigSection):
    """Where documents land and how they are read (raw_corpus)."""

    landing_dir: str | None = None  # None -> <home>/landing, seeded with the default demo source
    default_source: Literal["python_docs", "none"] = "python_docs"
    extensions: list[str] = [".rst", ".txt", ".md", ".html", ".htm", ".jsonl", ".parquet", ".pdf"]
    # Field holding the document text in .jsonl lines and .parquet rows (optional "id"/"title" fields too).
    jsonl_text_field: str = "text"
    min_chars: int = Field(200, ge=1)  # shorter documents carry no usable content
    # How many documentation files the demo seed copies (the glossary and FAQ files are always included);
    # None copies all of them. The smoke profile takes a small slice.
    demo_max_files: int | None = Field(None, ge=1)
    # Debian's HTML pages of the docs are near-duplicates of the reST sources: seeding a share of them into a
    # second drop gives dedup real duplicates to find.
    seed_html_duplicates: int = Field(40, ge=0)


class QualityConfig(ConfigSection):
    """Gopher/C4-style document filters applied in dedup_corpus; a None bound switches that filter off.

    Defaults are looser than Gopher's web-text bounds where real documentation pages failed them (measured on
    the demo corpus: Gopher's bounds removed 33 of 534 documents, 18 of them real pages such as itertools and
    the argparse howto; these remove 15, all navigation stubs under 50 words)."""

    enabled: bool = True
    min_words: int | None = Field(50, ge=1)
    max_words: int | None = Field(100_000, ge=1)
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(12.0, gt=0)  # dotted API names run long
    # Share of words that are symbols (#, ..., bullets): high in boilerplate and markup soup.
    max_symbol_ratio: float | None = Field(0.2, ge=0, le=1)
    # Share of non-blank lines that repeat an earlier line of the same document.
    max_duplicate_line_fraction: float | None = Field(0.5, ge=0, le=1)
    # Share of words with at least one alphabetic character. Gopher keeps >= 0.8 for web text; code-heavy
    # documentation (doctest prompts, numbers, tables) legitimately sits lower: the Python docs go down to 0.695.
    min_alpha_ratio: float | None = Field(0.6, ge=0, le=1)


PII_TYPES = ("email", "phone", "ip_address", "credit_card", "secret")


class PiiConfig(ConfigSection):
    """PII redaction in dedup_corpus: matches are replaced by typed placeholders such as [EMAIL]."""

    enabled: bool = True
    types: list[Literal["email", "phone", "ip_address", "credit_card", "secret"]] = list(PII_TYPES)


class SemanticDedupConfig(ConfigSection):
    """Optional SemDeDup-style stage after near dedup (phases.data.semdedup): MiniLM embeddings, k-means
    clusters, cosine within clusters. Off by default: it removes paraphrases, which a corpus may want."""

    enabled: bool = False
    # Cosine of two documents' embeddings. Rewritten summaries measured 0.75-0.87 against their page, short
    # distinct pages on neighbouring topics up to 0.50 (test_semdedup.py's texts); but whole Python-docs pages
    # are alike to MiniLM: on the demo corpus 0.7 would remove 40% of it (bench/semdedup_demo.py), so the
    # default only takes near-restatements. Lower it for a corpus of rewrites.
    threshold: float = Field(0.9, gt=0, le=1)
    chunk_words: int = Field(128, ge=8, le=512)  # MiniLM reads 256 word pieces: ~128-200 words
    max_chunks: int = Field(4, ge=1, le=64)  # a document's embedding: the mean of its first chunks
    batch_size: int = Field(32, ge=1)
    clusters: int | None = Field(None, ge=1)  # None: sqrt(documents)
    clusters_per_doc: int = Field(2, ge=1)  # nearest centroids a document is compared within
    seed: int = 0


class DedupConfig(ConfigSection):
    # Bounded: a signature costs num_perm x 4 bytes per document and every shingle is hashed num_perm times,
    # so an accidental --num-perm 1000000 would exhaust memory instead of failing here.
    num_perm: int = Field(128, ge=16, le=1024)
    threshold: float = Field(0.8, gt=0, lt=1)
    shingle_words: int = Field(5, ge=1, le=32)
    # Documents longer than this are set aside with the reason (a 50 MB document took the dedup command to
    # 5 GB of memory); the longest page of the demo corpus is about 210,000 characters.
    max_document_chars: int = Field(2_000_000, ge=1_000)
    # LSH banding; None for both derives bands/rows from the threshold (tuned below it for recall, every
    # candidate is verified against the threshold anyway). Set both to fix them: bands * rows <= num_perm.
    bands: int | None = Field(None, ge=2)
    rows: int | None = Field(None, ge=1)
    # Candidates whose MinHash estimate is this far below the threshold are dropped without computing their
    # exact Jaccard (the estimate's standard error is ~0.035 at 0.8 with 128 permutations: 0.15 is > 4 SE).
    prefilter_margin: float = Field(0.15, ge=0, lt=1)
    # Signatures are computed on Ray Data (in parallel over the cluster) when a run has at least this many
    # new documents; below it the local path is faster than Ray's start-up. Same result either way.
    ray_min_documents: int = Field(20_000, ge=1)
    # A full curation (first run, changed settings) runs wholly on Ray Data: workers read the raw Parquet,
    # filter, sign, band, join and verify; the driver holds counts only (launch.ray_dedup). "auto" goes when
    # the drops hold at least distributed_min_documents rows. Same kept set as the local path.
    distributed: Literal["auto", "always", "never"] = "auto"
    distributed_min_documents: int = Field(200_000, ge=1)
    shuffle_partitions: int | None = Field(None, ge=1)  # None: twice the cluster's CPUs
    # Keep a persisted index of kept documents so a new drop is checked against it without recomputing
    # earlier drops.
    incremental: bool = True
    semantic: SemanticDedupConfig = SemanticDedupConfig()
    quality: QualityConfig = QualityConfig()
    pii: PiiConfig = PiiConfig()

    @model_validator(mode="after")
    def _banding(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("dedup.bands and dedup.rows must be set together (or both left out)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"dedup.bands * dedup.rows = {self.bands * self.rows} exceeds dedup.num_perm = {self.num_perm}"
            )
        return self

"""dedup_corpus: exact and near-duplicate removal with MinHash LSH (datasketch 2.0).

Two passes over the documents, in (drop, source) order so the outcome never depends on input order:
1. exact: the hash of the normalized text with punctuation stripped (whitespace/case/markup-only copies);
2. near: MinHash over word shingles, LSH for candidates, the estimate as a pre-filter, and each remaining
   candidate decided by the exact Jaccard of the two shingle sets (phases.data.dedup_index). The first
   occurrence always wins.

The shingles are taken from text with reST inline markup stripped: the same page as reST source and as
rendered HTML differs mostly in markup (:func:`x` vs x), and those are the duplicates worth catching.
"""

import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np
from datasketch import MinHash

from finetune_assets.config import DedupConfig
from finetune_assets.phases.data.dedup_index import MINHASH_SEED, DedupIndex, exact_jaccard, make_lsh  # noqa: F401
from finetune_assets.phases.data.dedup_inputs import TEXT_SUFFIXES, read_dedup_inputs, too_long  # noqa: F401

_ROLE = re.compile(r":(?:[\w.+-]+:)+`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")

# Explicit markup that renders to nothing: labels, comments, index entries, authors, toctrees, setup code.
_INVISIBLE = re.compile(
    r"\.\. (?:_[^:]*:|\|[^|]+\||(?:index|highlight|moduleauthor|sectionauthor|toctree|tabularcolumns"
    r"|testsetup|testcleanup|only|include|raw)::)"
)

_VERSION_WORDS = {
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}

_DIRECTIVE = re.compile(r"^(\s*)\.\. ([\w:-]+)::")

_OPTION = re.compile(r"^:[\w -]+:(\s|$)")

_WORD = re.compile(r"\w+")

# ASCII bytes outside _WORD's \w ([a-z0-9_] once lowercased) -> space: bytes.translate and split find its
# words ~3x faster than the regex (bench/dedup_bench.py's documents: 0.057 s against 0.167 s).
_ASCII_WORDS = bytes(
    c if chr(c).isascii() and (chr(c).isalnum() or chr(c) == "_") else 32 for c in range(256)
)


def normalize(text: str) -> str:
    """Unicode NFKC, lowercase, whitespace collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_key(text: str) -> str:
    """Key of the exact pass: normalized text without punctuation, hashed."""
    words = _WORD.findall(normalize(text))
    return hashlib.sha1(" ".join(words).encode()).hexdigest()


def word_stream(text: str) -> bytes:
    """The words of ``normalize(text)`` (``_WORD.findall``) joined by single spaces, UTF-8: what the exact
    key hashes and what shingles are cut from. ASCII text (most of it) gets there with one bytes
    translation instead of a regex; other text through the Unicode word pattern."""
    folded = unicodedata.normalize("NFKC", text).lower()
    if folded.isascii():
        return b" ".join(folded.encode().translate(_ASCII_WORDS).split())
    return " ".join(_WORD.findall(folded)).encode()


def strip_markup(text: str) -> str:
    """reST source reduced to what a reader sees: roles keep their text, invisible explicit markup
    (labels, comments, index entries, toctrees) goes with its indented body, directive markers and option
    lines go, and version directives read as Sphinx renders them ("Changed in version")."""
    if ".." not in text and ":" not in text:
        return text  # plain text: nothing to strip (the common case outside reST sources)
    out, skip_deeper_than = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if skip_deeper_than is not None:
            if not stripped or len(line) - len(line.lstrip()) > skip_deeper_than:
                continue
            skip_deeper_than = None
        if stripped.startswith(".."):
            is_comment = (
                stripped.startswith(".. ") and "::" not in stripped and not stripped.startswith(".. _")
            )
            if _INVISIBLE.match(stripped) or stripped == ".." or is_comment:
                skip_deeper_than = len(line) - len(line.lstrip())
                continue
            line = _DIRECTIVE.sub(lambda m: m.group(1) + _VERSION_WORDS.get(m.group(2), ""), line)
        elif stripped.startswith(":") and _OPTION.match(stripped):
            continue
        out.append(line)
    return _ROLE.sub(r"\1", "\n".join(out))


def shingles(text: str, k: int) -> list[bytes]:
    """Distinct k-word shingles of the markup-stripped, normalized text (one shingle if fewer words).

    The byte-string form datasketch's MinHash.update takes; the benchmark's baseline uses it. The graph
    hashes the same shingles with ``Signer`` instead."""
    words = _WORD.findall(normalize(strip_markup(text)))
    if len(words) <= k:
        return [" ".join(words).encode()]
    return list({" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)})


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

_MIX = np.uint64(0xBF58476D1CE4E5B9)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch's affine32 scheme pre-mixes every input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


_SPACE = 32

_POLY = 0x100000001B3_9E37  # odd: invertible modulo 2^64, so a word's hash is a difference of prefix sums

_POLY_INVERSE = pow(_POLY, -1, 2**64)


class Signer:
    """MinHash signatures of many texts at once.

    Each signature is bit-for-bit what datasketch's ``MinHash(num_perm, seed=1)`` (the affine32 scheme, its
    default) holds after ``update_batch`` of the same 32-bit shingle hashes (a test checks it). What makes it
    faster than the per-document loop: a chunk of documents is one byte array, every word's 64-bit hash is
    a polynomial over its bytes computed for all words at once (prefix sums of byte * P^-i, scaled by
    P^end, then mixed), k-word shingle hashes are rolled with numpy over the chunk's words, and the
    permutations and minimum run as one numpy pass (np.minimum.reduceat) instead of one MinHash object per
    document. bench/dedup_bench.py measures it against the per-document loop.
    """

    def __init__(self, num_perm: int = 128, shingle_words: int = 5, chunk_rows: int = 8192):
        a, b = MinHash(num_perm=num_perm, seed=MINHASH_SEED).permutations
        self.num_perm, self.shingle_words, self.chunk_rows = num_perm, shingle_words, chunk_rows
        self._a, self._b = a.astype(np.uint32), b.astype(np.uint32)
        self._powers = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))  # P^i, P^-i

    def _power_tables(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(P^i, P^-i) for i < n, modulo 2^64 (uint64 products wrap), grown as needed."""
        if len(self._powers[0]) < n:
            size = max(n, 2 * len(self._powers[0]))
            with np.errstate(over="ignore"):
                up = np.cumprod(np.full(size - 1, _POLY, dtype=np.uint64))
                down = np.cumprod(np.full(size - 1, _POLY_INVERSE, dtype=np.uint64))
            one = np.ones(1, dtype=np.uint64)
            self._powers = (np.concatenate([one, up]), np.concatenate([one, down]))
        return self._powers[0][:n], self._powers[1][:n]

    def word_hashes(self, streams: Sequence[bytes]) -> list[np.ndarray]:
        """Each stream's words (split on single spaces) as 64-bit hashes, computed for all streams at once."""
        buf = np.frombuffer(b" ".join(streams) + b" ", dtype=np.uint8)
        word = buf != _SPACE
        starts = np.flatnonzero(word & ~np.concatenate([[False], word[:-1]]))
        ends = np.flatnonzero(word & ~np.concatenate([word[1:], [False]])) + 1
        compact = buf[word].astype(np.uint64)
        lengths = ends - starts
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # word starts in `compact`
        up, down = self._power_tables(len(compact) + 1)
        with np.errstate(over="ignore"):
            sums = np.add.reduceat(compact * down[: len(compact)], first) if len(compact) else compact
            h = sums * up[first + lengths - 1]  # sum of byte_i * P^(last - i): the word's polynomial
            h = (h ^ (h >> np.uint64(33))) * _MIX
            h ^= h >> np.uint64(29)
        # A stream of n words holds n word starts; streams sit between the spaces that join them.
        stream_ends = np.cumsum([len(x) + 1 for x in streams])
        per_stream = np.searchsorted(starts, stream_ends) if len(streams) else np.zeros(0, dtype=np.int64)
        bounds = np.concatenate([[0], per_stream])
        return [h[bounds[i] : bounds[i + 1]] for i in range(len(streams))]

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the k-word shingles (one for a text shorter than k words), duplicates included:
        the minimum over a multiset equals the minimum over its set."""
        return self._hash_word_array(self.word_hashes([word_stream(strip_markup(text))])[0])

    def _hash_word_array(self, w: np.ndarray) -> np.ndarray:
        k = min(self.shingle_words, len(w)) or 1
        n = max(len(w) - k + 1, 1)
        rolled = np.zeros(n, dtype=np.uint64) if not len(w) else w[:n].copy()
        with np.errstate(over="ignore"):
            for j in range(1, k):
                rolled = rolled * _GOLDEN + w[j : j + n]
            rolled = (rolled ^ (rolled >> np.uint64(31))) * _MIX
        return (rolled >> np.uint64(32)).astype(np.uint32)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        return self.signatures_of_streams([word_stream(strip_markup(t)) for t in texts])

    def signatures_of_streams(self, streams: Sequence[bytes], shingle_sets: list | None = None) -> np.ndarray:
        """Signatures of word streams (``word_stream`` of the markup-stripped texts, what ``signatures``
        computes first); with a list as ``shingle_sets``, each text's sorted distinct shingle hashes are
        appended to it (exact Jaccard). Streams go in chunks of about ``chunk_rows`` words."""
        out = np.empty((len(streams), self.num_perm), dtype=np.uint32)
        first = rows = 0
        for i, stream in enumerate(streams):
            rows += stream.count(b" ") + 1
            if rows >= self.chunk_rows or i == len(streams) - 1:
                batch = self._hash_many(self.word_hashes(streams[first : i + 1]))
                if shingle_sets is not None:
                    shingle_sets.extend(_distinct_each(batch))
                out[first : i + 1] = self._min_hash(batch)
                first, rows = i + 1, 0
        return out

    def _hash_many(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """``_hash_word_array`` of each array, rolled over their concatenation in one pass (the windows that
        cross from one document into the next are computed and dropped): same values, far fewer numpy calls."""
        k = self.shingle_words
        if any(len(a) < k for a in arrays):  # a text shorter than k words is one shingle of all its words
            return [self._hash_word_array(a) for a in arrays]
        w = np.concatenate(arrays)
        n = len(w) - k + 1
        rolled = w[:n].copy()
        with np.errstate(over="ignore"):
            for j in range(1, k):
                rolled = rolled * _GOLDEN + w[j : j + n]
            rolled = (rolled ^ (rolled >> np.uint64(31))) * _MIX
        hashed = (rolled >> np.uint64(32)).astype(np.uint32)
        starts = np.cumsum([0] + [len(a) for a in arrays[:-1]])
        return [
            hashed[start : start + len(a) - k + 1] for start, a in zip(starts.tolist(), arrays, strict=True)
        ]

    def _min_hash(self, batch: list[np.ndarray]) -> np.ndarray:
        starts = np.cumsum([0] + [len(h) for h in batch[:-1]])
        mixed = _fmix32(np.concatenate(batch))[None, :]
        # (num_perm, shingles) layout: the minimum runs along contiguous memory, ~9x faster than axis 0.
        permuted = np.multiply(self._a[:, None], mixed)  # uint32 wraparound is the scheme's modulo 2^32
        np.add(permuted, self._b[:, None], out=permuted)
        return np.minimum.reduceat(permuted, starts, axis=1).T


def _distinct_each(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """np.unique of each array, by one sort of them all (document index in the high 32 bits)."""
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    if not len(arrays) or not lengths.sum():
        return [np.unique(a) for a in arrays]
    owner = np.repeat(np.arange(len(arrays), dtype=np.uint64), lengths)
    keyed = np.sort((owner << np.uint64(32)) | np.concatenate(arrays).astype(np.uint64))
    first = np.ones(len(keyed), dtype=bool)
    first[1:] = keyed[1:] != keyed[:-1]
    keyed = keyed[first]
    bounds = np.searchsorted(keyed >> np.uint64(32), np.arange(len(arrays) + 1, dtype=np.uint64))
    values = (keyed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return [values[bounds[i] : bounds[i + 1]] for i in range(len(arrays))]


Sign = Callable[[Sequence[str]], np.ndarray]


def doc_features(text: str) -> tuple[str, bytes]:
    """(exact key, the word stream to shingle) from one tokenization when markup stripping changes nothing."""
    stream = word_stream(text)
    key = hashlib.sha1(stream).hexdigest()  # = exact_key(text)
    stripped = strip_markup(text)
    return key, stream if stripped == text else word_stream(stripped)


def decide(
    ids: Sequence[str],
    texts: Sequence[str],
    index: DedupIndex,
    sign: Sign | None = None,
    times: dict | None = None,
) -> list[dict]:
    """Run ``texts`` (with unique ``ids``) through ``index`` in order; returns the findings of
    DedupIndex.add. ``sign`` computes signatures (default: a local Signer; launch.ray_data provides the
    same on Ray Data; the shingle sets for exact verification are then hashed here). Each distinct text is
    signed once, and a text whose exact copy is already kept is not signed at all. ``times`` (a dict) gets
    the seconds of each stage added: shingle (tokenize, exact keys), sign (hashes, MinHash), and the index's
    lsh and verify."""
    clock = time.perf_counter()
    features = [doc_features(t) for t in texts]
    keys = [key for key, _ in features]
    first_of: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in index.exact:
            first_of.setdefault(key, i)
    need = list(first_of.values())
    clock = _lap(times, "shingle", clock)
    signatures = np.zeros((len(texts), index.cfg.num_perm), dtype=np.uint32)
    shingle_sets: list = [None] * len(texts)
    if need:
        signer = Signer(index.cfg.num_perm, index.cfg.shingle_words)
        computed_sets: list[np.ndarray] = []
        if sign is None:
            computed = signer.signatures_of_streams([features[i][1] for i in need], computed_sets)
        else:
            computed = np.asarray(sign([texts[i] for i in need]), dtype=np.uint32)
            streams = [features[i][1] for i in need]
            computed_sets = _distinct_each(signer._hash_many(signer.word_hashes(streams)))
        signatures[need] = computed
        for i, shingle_set in zip(need, computed_sets, strict=True):
            shingle_sets[i] = shingle_set
        for i, key in enumerate(keys):  # later copies share the first copy's signature
            if key in first_of and first_of[key] != i:
                signatures[i] = signatures[first_of[key]]
                shingle_sets[i] = shingle_sets[first_of[key]]
    _lap(times, "sign", clock)
    return index.add(ids, keys, signatures, shingle_sets, times)


def _lap(times: dict | None, stage: str, since: float) -> float:
    now = time.perf_counter()
    if times is not None:
        times[stage] = times.get(stage, 0.0) + now - since
    return now


def find_duplicates(
    texts: Sequence[str],
    num_perm: int = 128,
    threshold: float = 0.8,
    shingle_words: int = 5,
    sign: Sign | None = None,
    times: dict | None = None,
) -> list[dict]:
    """Duplicates among ``texts`` taken in the given order (earlier wins).

    Returns one {index, reason: "exact"|"near", duplicate_of: index, jaccard, estimate} per removed text.
    Reused by the instruction phase on prompt+response strings. ``times``: see ``decide``.
    """
    cfg = DedupConfig(num_perm=num_perm, threshold=threshold, shingle_words=shingle_words)
    found = decide([str(i) for i in range(len(texts))], texts, DedupIndex(cfg), sign, times)
    return [{**f, "index": int(f.pop("id")), "duplicate_of": int(f["duplicate_of"])} for f in found]


def dedup_documents(
    docs: list[dict], cfg: DedupConfig, index: DedupIndex | None = None, sign: Sign | None = None
) -> dict:
    """Remove exact and near duplicate documents.

    Returns {kept: documents in input order, removed: [{id, source, drop, reason, duplicate_of (kept doc
    id), jaccard}], clusters (see clusters_of), stats: {input, exact_removed, near_removed, kept}}.
    Decisions are taken in (drop, source) order, so an earlier drop's copy wins and the result is
    deterministic. With ``index`` (a DedupIndex of earlier drops) documents are also checked against
    everything kept before, and the index grows by what is kept now.
    """
    order = sorted(range(len(docs)), key=lambda i: (docs[i]["drop"], docs[i]["source"]))
    kept, pairs, stats = _dedup_in_order(docs, order, cfg, index, sign)
    removed = [
        {
            "id": docs[i]["id"],
            "source": docs[i]["source"],
            "drop": docs[i]["drop"],
            "reason": dup["reason"],
            "duplicate_of": dup["duplicate_of"],
            "jaccard": dup["jaccard"],
        }
        for i, dup in pairs
    ]
    return {"kept": kept, "removed": removed, "clusters": clusters_of(removed), "stats": stats}


def clusters_of(removed: list[dict]) -> list[dict]:
    """Removals grouped by the kept document they duplicate: [{kept, duplicates: [{id, reason, jaccard}]}],
    largest cluster first, so a user sees which document was kept and which were dropped for it."""
    by_kept: dict[str, list[dict]] = {}
    for r in removed:
        dup = {"id": r["id"], "reason": r["reason"], "jaccard": r["jaccard"]}
        if r.get("cosine") is not None:  # a semantic duplicate (phases.data.semdedup)
            dup["cosine"] = r["cosine"]
        by_kept.setdefault(r["duplicate_of"], []).append(dup)
    clusters = [{"kept": k, "duplicates": v} for k, v in by_kept.items()]
    return sorted(clusters, key=lambda c: (-len(c["duplicates"]), c["kept"]))


def _dedup_in_order(
    docs: list[dict],
    order: list[int],
    cfg: DedupConfig,
    index: DedupIndex | None = None,
    sign: Sign | None = None,
) -> tuple[list[dict], list, dict]:
    """Decide documents in ``order`` against ``index`` (a fresh one by default); returns (kept docs in
    input order, [(removed doc's index, finding with duplicate_of = a kept id)], stats)."""
    index = index if index is not None else DedupIndex(cfg)
    ids = [docs[i]["id"] for i in order]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"document ids must be unique for dedup; repeated: {repeated}")
    found = decide([docs[i]["id"] for i in order], [docs[i]["text"] for i in order], index, sign)
    position = {docs[i]["id"]: i for i in order}
    pairs = [(position[f["id"]], f) for f in found]
    dropped = {i for i, _ in pairs}
    kept = [doc for i, doc in enumerate(docs) if i not in dropped]
    stats = {
        "input": len(docs),
        "exact_removed": sum(f["reason"] == "exact" for f in found),
        "near_removed": sum(f["reason"] == "near" for f in found),
        "kept": len(kept),
    }
    return kept, pairs, stats


def dedup_texts(docs: list[dict], cfg: DedupConfig) -> dict:
    """Exact + near-duplicate removal in input order (the first occurrence is kept).

    Returns {kept: [{id, text}], duplicates: [{id, duplicate_of, reason, jaccard}], stats}."""
    kept, pairs, stats = _dedup_in_order(docs, list(range(len(docs))), cfg)
    duplicates = [
        {
            "id": docs[i]["id"],
            "duplicate_of": d["duplicate_of"],
            "reason": d["reason"],
            "jaccard": d["jaccard"],
        }
        for i, d in pairs
    ]
    return {
        "kept": [{"id": d["id"], "text": d["text"]} for d in kept],
        "duplicates": duplicates,
        "stats": stats,
    }

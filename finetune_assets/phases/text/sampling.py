"""Deterministic selection: evenly spread subsets, stable hash fractions and round-robin over groups.

The same inputs always give the same choice, on every machine and run, so that held-out splits never move.
"""

import hashlib


def spread(items: list, n: int | None) -> list:
    """``n`` items evenly spaced over ``items`` (all when n is None or large): deterministic, and a small
    slice still spans every section of the docs instead of only the alphabetically first folder."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: the same document is held out in every run and every drop."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def round_robin(items: list, group, limit: int | None, seed: int = 0) -> list:
    """Up to ``limit`` items taken one per group in turn (``group(item)`` names it), each group's items and
    the groups themselves in seeded stable-hash order: a sample that covers every group evenly.
    ``item["id"]`` keys the hash."""
    by_group: dict[str, list] = {}
    for item in sorted(items, key=lambda x: stable_fraction(f"{seed}/{x['id']}")):
        by_group.setdefault(group(item), []).append(item)
    queues = [by_group[g] for g in sorted(by_group, key=lambda g: stable_fraction(f"{seed}/{g}"))]
    limit = len(items) if limit is None else limit
    picked: list = []
    depth = 0
    while len(picked) < limit and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: limit - len(picked)]
        depth += 1
    return picked

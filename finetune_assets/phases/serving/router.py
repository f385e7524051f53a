"""A/B routing: which served variant answers a request.

Weights are shares of traffic (normalized to sum to 1). A request with a user id goes where that id hashes
to, so a user sees one variant for as long as the weights stand (sticky), and the hash is salted so two
experiments split users independently. A request without one is drawn at random from a seeded generator.
"""

import hashlib
import random
from dataclasses import dataclass, field


@dataclass
class Router:
    weights: dict[str, float]
    salt: str = "finetune-assets-ab"
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        if not self.weights:
            raise ValueError("the router needs at least one variant")
        bad = {name: w for name, w in self.weights.items() if not (isinstance(w, int | float) and w >= 0)}
        if bad or not sum(self.weights.values()) > 0:
            raise ValueError(f"variant weights must be >= 0 and sum to more than 0, got {self.weights}")
        total = sum(self.weights.values())
        self.weights = {name: w / total for name, w in self.weights.items()}
        self._rng = random.Random(self.seed)

    def pick(self, user_id: str | None = None) -> str:
        """The variant for ``user_id`` (sticky), or a seeded random draw without one."""
        point = self._unit(user_id) if user_id else self._rng.random()
        upto = 0.0
        for name, weight in self.weights.items():
            upto += weight
            if point < upto:
                return name
        return next(name for name, w in reversed(self.weights.items()) if w > 0)  # point ~ 1.0 after rounding

    def _unit(self, user_id: str) -> float:
        digest = hashlib.sha256(f"{self.salt}\0{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64


def parse_weights(spec: str, names: list[str]) -> dict[str, float]:
    """``"0.9,0.1"`` (one per served variant, in order) as {name: weight}; a clear error names the flag."""
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {spec!r}") from None
    if len(values) != len(names):
        raise ValueError(f"--weights has {len(values)} values for {len(names)} variants ({', '.join(names)})")
    return dict(zip(names, values, strict=True))

"""Chronological train/validation/test split.

Rows are never shuffled across the split: the validation and test periods come strictly
after training, as they would in live use. ``gap`` rows are dropped before each later part
because the last labels of a part look ``lookahead`` bars into the next one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitIndices:
    train: slice
    val: slice
    test: slice

    def sizes(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in (self.train, self.val, self.test))  # type: ignore[return-value]


def chronological_split(
    n: int, train: float = 0.7, val: float = 0.15, test: float = 0.15, gap: int = 0
) -> SplitIndices:
    """Slices over ``n`` time-ordered rows with the given proportions (normalised to sum 1)."""
    if min(train, val, test) < 0 or train <= 0 or gap < 0:
        raise ValueError("split fractions must be >= 0 (train > 0) and gap >= 0")
    total = train + val + test
    train_end = int(round(n * train / total))
    val_end = int(round(n * (train + val) / total))
    val_start = min(train_end + gap, val_end) if val > 0 else train_end
    test_start = min(val_end + gap, n) if test > 0 else n
    split = SplitIndices(slice(0, train_end), slice(val_start, val_end), slice(test_start, n))
    if split.sizes()[0] < 1:
        raise ValueError(f"too few rows ({n}) to split")
    return split

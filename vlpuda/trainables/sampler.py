"""Which images each training step reads: endless index batches drawn from the seed alone, so a
trial is reproducible and resumable from its seed and sampler state."""

from __future__ import annotations

import numpy as np

from vlpuda.errors import DataError


class InfiniteSampler:
    """Endless random batches without replacement, reshuffled every pass, last partial dropped.

    Every rank derives the same permutation from (seed, pass) and takes its own stride of it, so
    DDP ranks see disjoint images; the state is two ints because the permutation is re-derived.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        name: str = "the domain",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, {world_size})")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        # Equal shard sizes on every rank keep the ranks' pass boundaries (and steps) in step.
        self.per_rank = n // world_size
        if self.per_rank < batch_size:
            raise DataError(
                f"{name} has {n} images ({self.per_rank} per worker over {world_size} workers), "
                f"fewer than the batch size {batch_size} per worker; lower the batch size or "
                "the number of workers"
            )
        self.batches_per_pass = self.per_rank // batch_size
        self._pass = 0
        self._position = 0
        self._shard = self._shard_for(0)

    def _shard_for(self, pass_index: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, pass_index]).permutation(self.n)
        return perm[self.rank :: self.world_size][: self.per_rank].astype(np.int64)

    def next_batch(self) -> np.ndarray:
        if self._position == self.batches_per_pass:
            self._pass += 1
            self._position = 0
            self._shard = self._shard_for(self._pass)
        start = self._position * self.batch_size
        self._position += 1
        return self._shard[start : start + self.batch_size].copy()

    def state_dict(self) -> dict[str, int]:
        return {"pass": self._pass, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        position = int(state["position"])
        if not 0 <= position <= self.batches_per_pass:
            raise ValueError(
                f"sampler position {position} is outside [0, {self.batches_per_pass}]; the "
                "state comes from a sampler with a different size or batch size"
            )
        self._pass, self._position = int(state["pass"]), position
        self._shard = self._shard_for(self._pass)

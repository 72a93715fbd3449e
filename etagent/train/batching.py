"""Length-bucketed micro-batches with a reproducible order, and right-padded collation.

Bucketing instead of packing: packing needs per-document attention isolation (varlen
kernels or 4-D masks) that CPU SDPA does not give for free; bucketing gets most of the
padding savings with plain causal attention. The order of an epoch is a pure function
of ``(seed, epoch, lengths)``, so a resumed run replays exactly the batches an
uninterrupted run would see (the trainer also stores the current epoch's plan in
each checkpoint and checks it on resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from etagent.train.sequences import TrainSequence


def epoch_plan(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket_batches: int = 32) -> list[list[int]]:
    """Micro-batches (lists of sequence indices) for one epoch.

    Shuffle all indices; cut into windows of ``batch_size * bucket_batches``; sort each
    window by length (so a batch holds similar lengths); cut into batches; shuffle the
    batch order (so the run does not sweep short-to-long). ``bucket_batches <= 1``
    gives plain shuffled batches. The last batch may be smaller (nothing is dropped).
    """
    if batch_size < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
    perm = rng.permutation(n).tolist()
    window = batch_size * max(1, bucket_batches)
    batches: list[list[int]] = []
    for start in range(0, n, window):
        chunk = perm[start : start + window]
        if bucket_batches > 1:
            chunk = sorted(chunk, key=lambda i: lengths[i])  # stable: ties keep the shuffled order
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches)).tolist()
    return [batches[i] for i in order]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded
    loss_mask: torch.Tensor  # [B, T] 1 where the token is a trained label
    lengths: list[int]
    indices: list[int]

    @property
    def n_tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def n_loss_tokens(self) -> int:
        return int(self.loss_mask[:, 1:].sum().item())

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.loss_mask.to(device), self.lengths, self.indices)


def collate(seqs: Sequence[TrainSequence], indices: Sequence[int], pad_id: int) -> Batch:
    """Right-pad to the longest sequence; pads get loss mask 0.

    Right padding needs no attention mask: with causal attention a real token never
    sees the pads after it, so its logits equal those of the unpadded sequence.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s.ids, dtype=torch.long)
        mask[row, : len(s)] = torch.tensor(s.mask, dtype=torch.long)
    return Batch(ids, mask, [len(s) for s in seqs], list(indices))

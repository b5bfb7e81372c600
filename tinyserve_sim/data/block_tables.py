"""Packing ragged block tables into the dense array the kernels read.

A block table is the list of physical block ids of one sequence, in logical
order (``manager.block_table(seq_id)``). Kernels want one int32 matrix
``[num_seqs, max_blocks]``; rows shorter than ``max_blocks`` are padded. The
padding is never read: a kernel only looks at the first
``ceil(seq_len / block_size)`` entries of a row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinyserve_sim.errors import KernelInputError

#: Value written into unused entries (never read by a kernel).
PAD_BLOCK = -1


def pack_block_tables(tables: Sequence[Sequence[int]], max_blocks: int | None = None) -> np.ndarray:
    """Stack ragged block tables into a C-contiguous int32 ``[S, max_blocks]`` array.

    >>> pack_block_tables([(4, 2), (7,)])
    array([[ 4,  2],
           [ 7, -1]], dtype=int32)
    """
    width = max((len(t) for t in tables), default=0)
    if max_blocks is None:
        max_blocks = max(width, 1)
    if width > max_blocks:
        raise KernelInputError(f"a block table has {width} entries, more than max_blocks={max_blocks}")
    out = np.full((len(tables), max_blocks), PAD_BLOCK, dtype=np.int32)
    for i, t in enumerate(tables):
        out[i, : len(t)] = t
    return out

"""``tinyserve-sim plan``: how ``paged_attention`` would launch a decode batch, and why.

``variant="auto"`` chooses between one pass and split-K, and the split-K partition, from
the shapes alone (:func:`~tinyserve_sim.data.geometry.choose_split`), so that the NumPy
twin and the CUDA kernel make the same choice and give the same bits. This command prints
that decision for any batch, without a GPU: the plan of a thread block, every grid the
rule weighed with its reason, and the one it takes.
"""

from __future__ import annotations

from typing import Annotated, Optional

import numpy as np
import typer

from tinyserve_sim.cli.common import console, fail
from tinyserve_sim.data.geometry import (
    MAX_GRID_YZ,
    REFERENCE_SMS,
    WaveRule,
    make_plan,
    split_candidates,
    wave_rule,
)
from tinyserve_sim.data.select_pages import selected_lengths_of

DTYPES = {"float16": np.float16, "float32": np.float32}


def _say(line: str) -> None:
    """One line of output, never wrapped (a pipe or a script reads it whole), no markup read."""
    console.print(line, soft_wrap=True, markup=False)


def _span(lens: np.ndarray) -> str:
    """``"4,096"`` when every row holds as many tokens, else ``"1,200 to 4,096"``."""
    low, high = int(lens.min()), int(lens.max())
    return f"{low:,}" if low == high else f"{low:,} to {high:,}"


#: The most tokens a row may hold (the kernels count positions in int32) and the most
#: (sequence, KV head) rows the command weighs (far above any decode batch; it keeps the
#: arithmetic on the host small).
MAX_TOKENS = 2**31 - 1
MAX_ROWS = 1 << 20


def _rule_text(rule: WaveRule) -> str:
    """A plan's :class:`WaveRule` in words, as ``plan`` prints it."""
    longer = []
    if rule.more_waves_percent is not None:
        longer.append(f"{rule.more_waves_percent}% of their waves' places busy")
    if rule.many_waves is not None:
        longer.append(f"{rule.many_waves} waves or more")
    elif rule.more_waves_percent is not None:
        longer[-1] += ", however many"
    return f"{rule.name}: one wave {rule.one_wave_percent}% busy; longer grids {' or '.join(longer) or 'never'}"


def _lengths(batch: int, context: int, lengths: Optional[str]) -> np.ndarray:
    """Every sequence's length: ``--lengths`` (comma-separated) or ``batch`` x ``context``."""
    if lengths is None:
        if not 1 <= batch <= MAX_GRID_YZ or not 1 <= context <= MAX_TOKENS:
            raise fail(f"--batch must be 1..{MAX_GRID_YZ:,} and --context 1..{MAX_TOKENS:,}, got {batch} and {context}")
        return np.full(batch, context, dtype=np.int64)
    values = []
    for part in lengths.split(","):
        try:
            values.append(int(part))
        except ValueError:
            raise fail(f"--lengths must be comma-separated token counts, got {part.strip()!r}") from None
    if not 1 <= min(values) <= max(values) <= MAX_TOKENS or len(values) > MAX_GRID_YZ:
        raise fail(f"--lengths must be 1..{MAX_GRID_YZ:,} token counts of 1..{MAX_TOKENS:,} each")
    return np.asarray(values, dtype=np.int64)


def plan_command(
    batch: Annotated[int, typer.Option(help="Sequences in the batch (with --context).")] = 8,
    context: Annotated[int, typer.Option(help="Tokens of every sequence (with --batch).")] = 32768,
    lengths: Annotated[Optional[str], typer.Option(
        help="Comma-separated lengths, one per sequence (instead of --batch and --context).",
        show_default=False)] = None,
    heads: Annotated[int, typer.Option(help="Query heads.")] = 32,
    kv_heads: Annotated[int, typer.Option(help="KV heads (a divisor of --heads).")] = 8,
    head_dim: Annotated[int, typer.Option(help="Elements per head.")] = 128,
    dtype: Annotated[str, typer.Option(help="Cache dtype: float16 or float32.")] = "float16",
    partition: Annotated[Optional[int], typer.Option(
        help="A split-K partition to weigh instead of the rule's own (tokens, a multiple of 64).",
        show_default=False)] = None,
    budget: Annotated[Optional[int], typer.Option(
        help="Plan the attention of a query-aware selection of this many tokens per (sequence, KV head).",
        show_default=False)] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per page (with --budget).")] = 16,
) -> None:
    """How paged_attention launches a decode batch (variant="auto"), and why."""
    if dtype not in DTYPES:
        raise fail(f"--dtype must be float16 or float32, got {dtype!r}")
    lens = _lengths(batch, context, lengths)
    if kv_heads < 1 or heads < 1 or heads % kv_heads:
        raise fail(f"--heads {heads} cannot share --kv-heads {kv_heads}: a positive divisor is needed")
    if len(lens) * kv_heads > MAX_ROWS or heads > MAX_ROWS:
        raise fail(f"at most {MAX_ROWS:,} (sequence, KV head) rows and query heads, got {len(lens) * kv_heads:,} and {heads:,}")
    plan = make_plan(head_dim, DTYPES[dtype], heads // kv_heads)  # KernelInputError: one line, exit 2
    if budget is not None:
        if block_size < 1:
            raise fail(f"--block-size must be a positive number of tokens, got {block_size}")
        kept = selected_lengths_of(lens, block_size, budget)  # KernelInputError: one line, exit 2
        _say(f"a selection of {budget:,} tokens ({budget // block_size} pages of {block_size}) keeps "
             f"{_span(kept)} tokens a row")
        lens = kept
    candidates = split_candidates(plan, heads, kv_heads, lens, partition)
    chosen = next(c for c in candidates if c.accepted)  # what choose_split takes

    slots = chosen.slots  # every candidate's: SMs x blocks per SM of this plan
    _say(
        f"a thread block: {plan.lanes} lanes x {plan.rows} token rows, {plan.heads_per_block} of the "
        f"{heads // kv_heads} query heads of a KV head, chunks of {plan.chunk} tokens, "
        f"{plan.shared_memory_bytes / 1024:.1f} KiB of shared memory"
    )
    _say(
        "the logits on tensor cores: one mma.sync m16n8k16 per 16 dims (16 tokens x up to 8 query heads)"
        if plan.tensor_core_logits
        else "the logits on CUDA cores: fused multiply-adds per lane, a reduce-scatter butterfly across lanes"
    )
    _say(
        "P V on tensor cores: each p split into three float16 parts, one mma.sync per 16 tokens, part and 16 dims"
        if plan.tensor_core_values
        else "P V on CUDA cores: a fused multiply-add per token, element and head, row by row"
    )
    _say(
        f"the reference GPU: {REFERENCE_SMS} SMs x {slots // REFERENCE_SMS} blocks = {slots} places in a wave"
    )
    _say(f"grids this plan accepts ({_rule_text(wave_rule(plan))})")
    _say(
        f"the batch: {lens.shape[0]} sequence{'' if lens.shape[0] == 1 else 's'} x {kv_heads} KV heads = {lens.shape[0] * kv_heads} rows of "
        f"{_span(lens)} tokens"
    )
    _say("grids weighed, longest work per block first:")
    for c in candidates:
        name = "one pass" if c.partition is None else f"split-K {c.partition:>5}"
        _say(f"  {'*' if c.accepted else ' '} {name:<14} {c.why}")
    name = "one pass" if chosen.partition is None else f"split-K, partitions of {chosen.partition:,} tokens"
    _say(f"chosen: {name} (the first grid marked *)")

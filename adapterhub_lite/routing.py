"""Per-sample routing: which adapter each sample of a batch runs.

A `Route` is data: `AdaptedModel.routing(names)` makes one for a block and
hands it to the routed forward strategy (`forward.py`), which passes it to
the layers' `run` and `add_deltas_routed`. Nothing here knows a layer.

`grouped_low_rank` is the product kinds route with: each sample through its own
adapter's pair of matrices only (LoRA's A and B, or any family's low-rank form),
one pair of batched products for all groups, so the adapter cost does not grow
with the number of adapters a batch names; `grouped_conv_low_rank` is its form
for convolutions (one conv with a kernel per sample, then one batched product);
`RowPool` keeps one row per adapter (a scale, a magnitude ratio) for tables a
routed batch reads by sample.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AdapterStateError


@dataclass(frozen=True)
class Groups:
    """The samples of a batch grouped by the adapter they run, for grouped products: computed once per route
    and live set, so every layer with those adapters shares it (a layer only moves rows by it)."""

    order: Tensor  # (K,) the samples that run a live adapter, sorted by it (stable)
    counts: Tensor  # (G,) samples per live adapter, in live order (zero for one no sample runs)
    slot: Tensor  # (K,) where order[k] sits in a (G, widest) layout: group * widest + its place in the group
    widest: int  # the largest group

    @property
    def padded_rows(self) -> int:
        """Rows of the (G, widest) layout: the work a batched product over equal groups does."""
        return len(self.counts) * self.widest


@dataclass(frozen=True)
class Route:
    """Per-sample adapter choice for one batch: sample i runs `names[index[i]]` only (-1: the bare base)."""

    names: tuple[str, ...]
    index: Tensor  # (N,) long
    _groups: dict = field(default_factory=dict, compare=False, repr=False)  # live names -> Groups

    @classmethod
    def of(cls, per_sample: Sequence[str | None]) -> Route:
        names = tuple(sorted({n for n in per_sample if n}))  # sorted: the same set, the same kept stacks
        index = torch.tensor([names.index(n) if n else -1 for n in per_sample], dtype=torch.long)
        return cls(names, index)

    def sample_mask(self, name: str, like: Tensor, batch_dim: int = 0) -> Tensor:
        """1.0 for the samples that run `name`, shaped to broadcast over `like` along its batch axis."""
        self.check_batch(like, batch_dim)
        mask = (self.index == self.names.index(name)).to(device=like.device, dtype=like.dtype)
        shape = [1] * like.dim()
        shape[batch_dim] = -1
        return mask.view(shape)

    def rows(self, name: str, device: torch.device | None = None) -> Tensor:
        """The batch positions of the samples that run `name`."""
        return (self.index.to(device) == self.names.index(name)).nonzero().squeeze(1)

    def groups(self, live: Sequence[str]) -> Groups:
        """The batch grouped by the adapters in `live` (in that order); samples of none of them are left out."""
        key = tuple(live)
        hit = self._groups.get(key)
        if hit is not None:
            return hit
        group = self.positions(key)
        kept = (group >= 0).nonzero().squeeze(1)
        order = kept[torch.argsort(group[kept], stable=True)]
        counts = torch.bincount(group[order], minlength=len(key))
        widest = int(counts.max()) if len(order) else 0
        sorted_group = group[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = sorted_group * widest + torch.arange(len(order)) - starts[sorted_group]
        self._groups[key] = plan = Groups(order, counts, slot, widest)
        return plan

    def positions(self, live: Sequence[str], none: int = -1) -> Tensor:
        """(N,) long: for each sample, the place of its adapter in `live`, or `none` (no adapter, or one not in
        `live`; a table with a row for those puts it last: none=len(live)): what per-sample tables (a scale, a
        magnitude per adapter) are indexed by. Kept per live set, as the grouping is (every layer asks)."""
        key = ("positions", none, *live)
        hit = self._groups.get(key)
        if hit is not None:
            return hit
        where = {name: i for i, name in enumerate(self.names)}
        position = [none] * (len(self.names) + 1)  # route index -1 reads the last
        for i, name in enumerate(live):
            if name in where:
                position[where[name]] = i
        self._groups[key] = found = torch.tensor(position, dtype=torch.long)[self.index]
        return found

    def check_batch(self, like: Tensor, batch_dim: int) -> None:
        if like.dim() <= batch_dim or like.shape[batch_dim] != len(self.index):
            raise AdapterStateError(f"the route names an adapter for {len(self.index)} samples, but this batch has "
                                    f"{like.shape[batch_dim] if like.dim() > batch_dim else 'no batch axis'}")


GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what grouped_mm runs on the CPU


def groupable(x: Tensor, batch_dim: int, tensors: Iterable[Tensor]) -> bool:
    """Whether `grouped_low_rank` can serve a routed call on input `x` with these adapter tensors: the batch on
    the first axis, a dtype the grouped products run on, and nothing for autograd to record (neither product has
    a CPU backward here: training routes the other way)."""
    if getattr(F, "grouped_mm", None) is None or batch_dim != 0 or x.dim() < 2 or x.dtype not in GROUPED_DTYPES:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)))


def padded_width(n: int, dtype: torch.dtype) -> int:
    """`n` rounded up so a row of this dtype is a multiple of 16 bytes (grouped_mm's stride rule): the widths
    `grouped_low_rank`'s factors are padded to, with zeros."""
    unit = 16 // torch.empty((), dtype=dtype).element_size()
    return -(-n // unit) * unit


def grouped_low_rank(x: Tensor, plan: Groups, down: Tensor, up: Tensor, weights: Tensor | None, out_features: int,
                     total: Tensor | None = None) -> Tensor:
    """`total` (None: zeros) plus, for the samples of each group g of `plan`, weights[g] * (x down[g]) up[g],
    added in place at the samples' rows; samples of no group get nothing. `x`: (N, ..., in), the batch first;
    `down`: (G, in', r), `up`: (G, r, out') with in' = padded_width(in), out' >= out_features and r padded
    likewise, zero beyond the real sizes (adapters of smaller rank: zero columns); `weights`: (G,) or None (all
    1). Groups of about equal size run as two batched GEMMs over a (G, widest) layout; uneven ones as two grouped
    GEMMs (torch's `grouped_mm`), which loop over the groups. Call only where `groupable` says yes."""
    in_features = x.shape[-1]
    total = x.new_zeros(*x.shape[:-1], out_features) if total is None else total
    if not len(plan.order):
        return total
    order = plan.order.to(x.device)
    tokens = x[0].numel() // in_features  # per sample
    rows = x.index_select(0, order).reshape(len(order), tokens, in_features)
    if down.shape[1] != in_features:
        rows = F.pad(rows, (0, down.shape[1] - in_features))
    if plan.padded_rows <= 4 * len(order):  # equal enough: batched GEMMs over the (G, widest) layout
        equal = plan.padded_rows == len(order)  # groups all of one size: the sorted rows are the layout
        slot = plan.slot.to(x.device)
        layout = rows if equal else rows.new_zeros(plan.padded_rows, tokens, rows.shape[-1]).index_copy_(0, slot, rows)
        h = torch.bmm(layout.view(len(down), -1, rows.shape[-1]), down)
        product = torch.bmm(h if weights is None else h * weights.view(-1, 1, 1), up)
        if not equal:
            product = product.view(plan.padded_rows, tokens, -1).index_select(0, slot)
    else:  # a few large groups beside small ones: grouped GEMMs, which loop over the groups
        offsets = (torch.cumsum(plan.counts, 0) * tokens).to(torch.int32)
        if weights is not None:
            up = up * weights.view(-1, 1, 1)
        product = F.grouped_mm(F.grouped_mm(rows.reshape(-1, rows.shape[-1]), down, offs=offsets), up, offs=offsets)
    return total.index_add_(0, order, product[..., :out_features].reshape(len(order), *x.shape[1:-1], out_features))


def grouped_conv_low_rank(x: Tensor, plan: Groups, down: Tensor, up: Tensor, weights: Tensor | None,
                          conv: Callable[[Tensor, Tensor, int], Tensor], total: Tensor | None = None) -> Tensor:
    """`total` (None: zeros) plus, for the samples of each group g of `plan`, weights[g] * up[g] conv(x, down[g]),
    added in place at their rows: a convolution into R channels, then a 1x1 map back out. `x`: (N, C, *spatial);
    `down`: (G, R, C, *kernel) (zero beyond an adapter's own rank); `up`: (G, out, R); `conv(input, kernel,
    groups)`: the base layer's conv (its stride, padding, dilation, padding mode) with that many groups and no
    bias. The routed samples run as one conv whose groups are the samples, each with its own adapter's kernel
    (gathered per sample), and one batched product: the work of each sample at its own adapter's rank, in two
    calls however many adapters the batch names."""
    order = plan.order.to(x.device)
    if not len(order):
        if total is None:
            total = x.new_zeros(x.shape[0], up.shape[1], *conv(x[:1], down[0], 1).shape[2:])
        return total
    group = torch.repeat_interleave(torch.arange(len(plan.counts), device=x.device), plan.counts.to(x.device))
    rows = x.index_select(0, order)
    kernels = down.index_select(0, group)  # (K, R, C, *kernel): each routed sample's own
    h = conv(rows.reshape(1, -1, *rows.shape[2:]), kernels.flatten(0, 1), len(order))  # (1, K * R, *spatial')
    spatial = h.shape[2:]
    maps = up.index_select(0, group)  # (K, out, R)
    if weights is not None:
        maps = maps * weights.index_select(0, group).view(-1, 1, 1)
    product = torch.bmm(maps, h.view(len(order), down.shape[1], -1)).view(len(order), up.shape[1], *spatial)
    if total is None:
        total = product.new_zeros(x.shape[0], *product.shape[1:])
    # in place where autograd records nothing; a copy where it does (the base op's backward may need its output)
    return total.index_add(0, order, product) if torch.is_grad_enabled() else total.index_add_(0, order, product)


class RowPool:
    """One row per adapter (a vector: a scale, a magnitude ratio), for per-sample tables under routing: each
    adapter keeps a slot, rewritten only when its key changes (what the row depends on: identity and version
    counter of the tensors it is computed from) and freed when the adapter is gone (slots are weakly keyed by
    the adapter's module, so they follow the adapters held); a batch gathers its adapters' rows by index, one
    copy, instead of computing and stacking them again for every new mix. Row 0 holds `rest`, the row of a
    sample that runs none of them."""

    def __init__(self, rest: float) -> None:
        self.rest = rest
        self.rows: Tensor | None = None  # (capacity, width); row 0: rest
        self.slots: weakref.WeakKeyDictionary[object, tuple[int, Hashable]] = weakref.WeakKeyDictionary()

    def table(self, entries: Sequence[tuple[object, Hashable, Callable[[], Tensor]] | None], like: Tensor) -> Tensor:
        """(len(entries) + 1, width) in `like`'s dtype and device: the rows of `entries`, each (adapter module,
        key, a function computing its row when the key changed) or None (`rest`), then `rest`."""
        index = [0 if entry is None else self._slot(*entry, like) for entry in entries] + [0]
        assert self.rows is not None
        return self.rows.index_select(0, torch.tensor(index, device=like.device))

    @property
    def nbytes(self) -> int:
        return 0 if self.rows is None else self.rows.numel() * self.rows.element_size()

    def _slot(self, owner: object, key: Hashable, compute: Callable[[], Tensor], like: Tensor) -> int:
        held = self.slots.get(owner)
        if held is not None and held[1] == key and self.rows is not None and self.rows.dtype == like.dtype:
            return held[0]
        with torch.inference_mode(False), torch.no_grad():  # kept rows outlive an inference_mode block
            row = compute().detach().to(device=like.device, dtype=like.dtype)
            if self.rows is None or self.rows.dtype != like.dtype or self.rows.shape[1] != row.shape[-1]:
                self.rows = row.new_full((8, row.shape[-1]), self.rest)
                self.slots = weakref.WeakKeyDictionary()
                held = None
            slot = held[0] if held is not None else self._free()
            self.rows[slot] = row
        self.slots[owner] = (slot, key)
        return slot

    def _free(self) -> int:
        """A slot no living adapter holds (never 0); the pool grows by a quarter when all are held."""
        assert self.rows is not None
        used = {slot for slot, _ in self.slots.values()}
        capacity = self.rows.shape[0]
        if len(used) + 1 >= capacity:
            more = self.rows.new_full((max(8, capacity // 4), self.rows.shape[1]), self.rest)
            self.rows = torch.cat([self.rows, more])
            return capacity
        return next(i for i in range(1, capacity) if i not in used)

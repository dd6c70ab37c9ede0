"""Paging: more adapters than memory. A model holds an adapter only while batches use it.

    pager = AdapterPager(am, zoo_adapters(zoo, "llama"), budget_bytes=2 << 30)
    with pager.routing(names):     # loads the names it lacks, evicts the least recently used
        logits = am(batch)

An adapter is loaded from the source (any name -> adapter file, e.g. the zoo's latest version of that name; the
file's base fingerprint is checked as `load_adapter` always does) the first time a batch names it, and deleted
from the model when the bytes held pass the budget, least recently used first. The bytes counted are the
adapters' own tensors plus the copies the layers keep to run them fast (fused stacks, routed factor pools:
`AdaptedModel.kept_bytes`), so resident memory follows the budget, not the number of adapters the source
could provide. A routed forward may keep up to `ROUTED_COPIES` copies of each of a batch's adapters (the LoRA
plugin: its slot in the layer's pool and the batch's gathered stack), so room is made for those before a
batch's new adapters load, and a batch whose adapters with their copies exceed the budget is refused.
Adapters the model held before the pager are never evicted.

Base check: the pager's first load reads the base's bytes for its fingerprints (as every `load_adapter` does);
later loads re-read a module only if one of its tensors changed storage or version counter, since reading a
few hundred megabytes of base for every adapter paged in would cost more than the adapter. An edit made
through `.data` after the first load goes unseen: serve a fixed base (or make a new pager after changing it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import AdapterStateError, ConfigError
from .model import AdaptedModel

Source = Callable[[str], "str | Path"]  # adapter name -> the adapter file to load it from
ROUTED_COPIES = 2  # what a routed forward may keep of each adapter a batch names, beside its own tensors


class AdapterPager:
    def __init__(self, am: AdaptedModel, source: Source, budget_bytes: int) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
            raise ConfigError(f"budget_bytes must be a positive integer, got {budget_bytes!r}")
        self.am, self.source, self.budget_bytes = am, source, budget_bytes
        self._paged: OrderedDict[str, int] = OrderedDict()  # adapters this pager loaded -> their bytes, LRU first
        self.loads = self.evictions = self.hits = 0
        self._recheck_base = True  # the first load reads the base's bytes for its fingerprints (a full check)

    @property
    def held(self) -> tuple[str, ...]:
        """The adapters this pager has loaded and not evicted, least recently used first."""
        return tuple(self._paged)

    @property
    def held_bytes(self) -> int:
        """What the budget bounds: the paged adapters' tensors plus every copy the layers keep of adapters."""
        return sum(self._paged.values()) + self.am.kept_bytes

    def hold(self, names: Sequence[str | None]) -> None:
        """Make sure the model holds every adapter `names` mentions (None: the bare base), loading those it
        lacks. Before loading, the least recently used others are evicted until what is held leaves room for
        the new adapters and the copies a routed forward keeps of the batch's adapters; a batch whose adapters
        with those copies alone exceed the budget (a file counts its tensor data) is refused before anything
        is loaded or evicted."""
        wanted = list(dict.fromkeys(n for n in names if n))
        files = {n: Path(self.source(n)) for n in wanted if n not in self.am.adapters}
        fresh = sum(_tensor_bytes(f) for f in files.values())
        own = sum(self._paged.get(n, 0) for n in wanted) + fresh
        need = own * (1 + ROUTED_COPIES)
        if need > self.budget_bytes:
            raise AdapterStateError(
                f"this batch names {len(wanted)} adapters holding {_bytes_text(own)} ({_bytes_text(need)} with the "
                f"copies routing keeps of them), more than the pager's budget of {_bytes_text(self.budget_bytes)}: "
                "raise budget_bytes or split the batch")
        for name in wanted:
            if name in self._paged:
                self._paged.move_to_end(name)
            if name not in files:
                self.hits += 1
        if not files:
            return  # nothing new held: within the budget as before (the hot path reads no layer)
        keep = set(wanted)
        # room for the new adapters, a pool slot each, and the batch's gathered copy (what the forward adds)
        self._evict_to(self.budget_bytes - 2 * fresh - own, keep)
        for name, file in files.items():
            self.am.load_adapter(file, name=name, activate=False, recheck_base=self._recheck_base)
            self._recheck_base = False  # the base's bytes were read: later loads trust its version counters
            self._paged[name] = self.am.adapter_bytes(name)
            self.loads += 1

    def _evict_to(self, limit: int, keep: set[str]) -> None:
        """Evict paged adapters outside `keep`, least recently used first, until the held bytes are within
        `limit` (or none is left to evict)."""
        for name in list(self._paged):
            if name not in keep and self.held_bytes > limit:
                self.evict(name)

    def evict(self, name: str) -> None:
        """Delete a paged adapter from the model (the next batch that names it loads it again)."""
        if name not in self._paged:
            raise AdapterStateError(f"{name!r} was not loaded by this pager: only paged adapters are evicted")
        self.am.delete_adapter(name)
        del self._paged[name]
        self.evictions += 1

    @contextmanager
    def routing(self, per_sample: Sequence[str | None]) -> Iterator[None]:
        """`AdaptedModel.routing(per_sample)` with every named adapter held first (`hold`)."""
        self.hold(per_sample)
        with self.am.routing(per_sample):
            yield


def _tensor_bytes(file: Path) -> int:
    """The tensor data a safetensors file holds: its size past the 8-byte length and the JSON header."""
    try:
        with open(file, "rb") as handle:
            header = int.from_bytes(handle.read(8), "little")
        return max(0, file.stat().st_size - 8 - header)
    except OSError:
        return 0  # load_adapter says what is wrong with it


def _bytes_text(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"

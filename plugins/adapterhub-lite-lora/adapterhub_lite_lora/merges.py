"""Combining LoRA adapters. Every method works on each adapter's *delta*
(user weight x alpha/r x B @ A), never on A and B separately, so mixed ranks,
alphas and rsLoRA combine correctly; the result has scale 1 (alpha = rank).

- cat:   the factors side by side: exact, rank = the sum of the ranks.
- linear: the exact weighted sum at the smallest rank that holds it (found
  from a QR of the stacked factors and an SVD of the small core).
- svd:   the weighted sum truncated to --rank (default: the largest input
  rank); reports the energy (squared singular values) kept.
- ties, dare-linear, dare-ties, magnitude-prune: sparsify each dense delta
  (by magnitude or seeded random drops), elect signs (ties), sum, then
  re-factor to --rank by SVD.

A weight with groups (grouped conv) is handled group by group. Inputs that
carry anything but plain LoRA factors (a DoRA magnitude, say) are refused.
"""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adapterhub_lite import ConfigError, IncompatibleAdapterError, CombineInput, CombineResult

from .config import ATTENTION_PROJECTIONS, LoraConfig
from .methods import METHODS

Pair = tuple[Tensor, Tensor]  # (b: (out_g, r), a: (r, in_g)); delta = b @ a, weight and scale folded into b


@dataclass
class Weight:
    """One adapted weight (a module, or one projection of an attention module) across all inputs."""

    module: str
    prefix: str  # state-key prefix: "fc1" or "attn.q"
    groups: int
    a_tail: tuple[int, ...]  # A's shape after its first axis
    b_tail: tuple[int, ...]  # B's shape after its first two axes
    out: int
    terms: list[list[Pair]]  # per input, per group


def _owner(key: str, modules: list[str]) -> str | None:
    return next((m for m in modules if key.startswith(m + ".")), None)


def collect(inputs: list[CombineInput]) -> dict[str, Weight]:
    """Every adapted weight, with each input's per-group term (zero-rank where an input lacks it)."""
    weights: dict[str, Weight] = {}
    for index, inp in enumerate(inputs):
        modules = sorted(inp.configs, key=len, reverse=True)
        for key in inp.state:
            if not key.endswith((".lora_A", ".lora_B")):
                raise IncompatibleAdapterError(
                    f"{inp.label}: tensor {key!r} is not a LoRA factor (a DoRA magnitude or a trained bias?); "
                    "these merge methods combine plain LoRA only")
        for key in sorted(inp.state):
            if not key.endswith(".lora_A"):
                continue
            prefix = key[: -len(".lora_A")]
            module = _owner(key, modules)
            config = inp.configs.get(module) if module else None
            if not isinstance(config, LoraConfig):
                raise IncompatibleAdapterError(f"{inp.label}: {key!r} belongs to no LoRA target module")
            a, b = inp.state[key], inp.state.get(prefix + ".lora_B")
            if b is None:
                raise IncompatibleAdapterError(f"{inp.label}: {prefix}.lora_B is missing")
            rank = b.shape[1]
            if rank != config.rank or a.shape[0] % rank:
                raise IncompatibleAdapterError(
                    f"{inp.label}: {prefix} has rank {rank} in its tensors but {config.rank} in its config")
            groups, out = a.shape[0] // rank, b.shape[0]
            weight = weights.setdefault(prefix, Weight(module, prefix, groups, tuple(a.shape[1:]),
                                                       tuple(b.shape[2:]), out, [[] for _ in inputs]))
            if (weight.groups, weight.a_tail, weight.b_tail, weight.out) != (groups, tuple(a.shape[1:]),
                                                                             tuple(b.shape[2:]), out):
                raise IncompatibleAdapterError(f"{inp.label}: {prefix} has another shape than in {inputs[0].label}")
            fold = inp.weight * config.scale
            a32, b32 = a.double().reshape(groups, rank, -1), b.double().reshape(groups, out // groups, rank)
            weight.terms[index] = [(b32[g] * fold, a32[g]) for g in range(groups)]
    for weight in weights.values():  # inputs without this weight contribute an empty term
        in_g = math.prod(weight.a_tail)
        for index, per_group in enumerate(weight.terms):
            if not per_group:
                weight.terms[index] = [(torch.zeros(weight.out // weight.groups, 0, dtype=torch.float64),
                                        torch.zeros(0, in_g, dtype=torch.float64))] * weight.groups
    return weights


def _stacked(pairs: list[Pair]) -> Pair:
    return torch.cat([b for b, _ in pairs], dim=1), torch.cat([a for _, a in pairs], dim=0)


def factor_svd(pairs: list[Pair]) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of sum(b @ a) without forming it: QR of the stacked factors, SVD of the small core."""
    b, a = _stacked(pairs)
    qb, rb = torch.linalg.qr(b)  # b = qb rb
    qa, ra = torch.linalg.qr(a.T)  # a = ra^T qa^T
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return qb @ u, s, vh @ qa.T  # delta = U diag(s) Vh


def dense_svd(delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.linalg.svd(delta, full_matrices=False)


def truncate(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Pair, float, float]:
    """The best rank-`rank` pair, the energy kept and the total energy."""
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    pair = (u[:, :rank] * root, root[:, None] * vh[:rank])
    return pair, float((s[:rank] ** 2).sum()), float((s**2).sum())


def numerical_rank(s: Tensor, shape: tuple[int, int]) -> int:
    """numpy.linalg.matrix_rank's tolerance, on the float64 factors."""
    if s.numel() == 0 or s[0] == 0:
        return 0
    return int((s > s[0] * max(shape) * torch.finfo(torch.float32).eps).sum())


# --- dense operators (TIES, DARE) on deltas of one group --------------------------------------------------------
def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """Keep the `density` fraction of entries with the largest magnitude."""
    keep = int(round(density * delta.numel()))
    if keep >= delta.numel():
        return delta
    if keep == 0:
        return torch.zeros_like(delta)
    threshold = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
    return delta * (delta.abs() >= threshold)


def random_drop(delta: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: drop entries with probability 1 - density, rescale the rest by 1/density."""
    mask = torch.rand(delta.shape, generator=generator, dtype=torch.float64) < density
    return delta * mask / density


def elect_and_mean(deltas: list[Tensor]) -> Tensor:
    """TIES: the sign with the larger total mass wins per entry; average the entries that agree with it."""
    stacked = torch.stack(deltas)
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


# --- the methods ----------------------------------------------------------------------------------------------
Combine = Callable[[list[Pair], int | None, dict], tuple[Pair, float, float]]


def _cat(pairs: list[Pair], rank: int | None, options: dict) -> tuple[Pair, float, float]:
    return _stacked(pairs), 1.0, 1.0


def _linear(pairs: list[Pair], rank: int | None, options: dict) -> tuple[Pair, float, float]:
    u, s, vh = factor_svd(pairs)
    exact = numerical_rank(s, (u.shape[0], vh.shape[1]))
    if rank is not None and rank < exact:
        raise IncompatibleAdapterError(
            f"linear is exact and this weighted sum needs rank {exact}; use method svd with rank {rank} to truncate",
            option="rank")
    return truncate(u, s, vh, max(exact, 1))


def _lossy(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Pair, float, float]:
    """Truncate to `rank`, never keeping singular directions that are numerically zero."""
    return truncate(u, s, vh, min(rank, max(numerical_rank(s, (u.shape[0], vh.shape[1])), 1)))


def _svd(pairs: list[Pair], rank: int | None, options: dict) -> tuple[Pair, float, float]:
    return _lossy(*factor_svd(pairs), rank or options["max_rank"])


def _dense(sparsify: str, elect: bool) -> Combine:
    def combine(pairs: list[Pair], rank: int | None, options: dict) -> tuple[Pair, float, float]:
        density = options["density"]
        deltas = []
        for b, a in pairs:
            if b.shape[1] == 0:
                continue  # this input does not adapt this weight
            delta = b @ a  # weight already folded in: the sign election sees weighted deltas (as PEFT does)
            if sparsify == "magnitude":
                delta = magnitude_prune(delta, density)
            else:
                delta = random_drop(delta, density, options["generator"])
            deltas.append(delta)
        total = elect_and_mean(deltas) if elect else torch.stack(deltas).sum(0)
        return _lossy(*dense_svd(total), rank or options["max_rank"])
    return combine


COMBINES: dict[str, Combine] = {  # the methods' descriptions and options: methods.py (read without torch)
    "cat": _cat,
    "linear": _linear,
    "svd": _svd,
    "ties": _dense("magnitude", True),
    "dare-linear": _dense("random", False),
    "dare-ties": _dense("random", True),
    "magnitude-prune": _dense("magnitude", False),
}


def merge(method: str, inputs: list[CombineInput], *, rank: int | None = None, density: float = 0.5,
          seed: int = 0) -> CombineResult:
    """Combine `inputs` with one of the methods (methods.METHODS); see the module docstring."""
    combine = COMBINES[method]
    if rank is not None and rank < 1:
        raise ConfigError(f"rank must be at least 1, got {rank}", option="rank")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1], got {density}", option="density")
    weights = collect(inputs)
    if not weights:
        raise IncompatibleAdapterError("the inputs hold no LoRA factors")
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, list[Pair]] = {}
    kept = total = 0.0
    worst = 1.0
    for prefix in sorted(weights):
        weight = weights[prefix]
        max_rank = max(b.shape[1] for per_group in weight.terms for b, _ in per_group)
        options = {"density": density, "generator": generator, "max_rank": max_rank}
        results[prefix] = []
        for g in range(weight.groups):
            pair, k, t = combine([per_group[g] for per_group in weight.terms], rank, options)
            results[prefix].append(pair)
            kept, total = kept + k, total + t
            worst = min(worst, k / t if t else 1.0)
    state, configs, ranks = _assemble(inputs, weights, results)
    exact = method in ("cat", "linear")
    report = {"method": method, "exact": exact, "ranks": ranks,
              "energy_kept": 1.0 if exact or not total else kept / total,
              "min_energy_kept": 1.0 if exact else worst}
    takes = {f.name for f in dataclasses.fields(METHODS[method][1])} - {"rank"}
    if takes:
        report["options"] = {k: v for k, v in (("density", density), ("seed", seed)) if k in takes}
    return CombineResult(configs=configs, state=state, report=report)


def _assemble(inputs: list[CombineInput], weights: dict[str, Weight],
              results: dict[str, list[Pair]]) -> tuple[dict[str, Tensor], dict[str, LoraConfig], dict[str, int]]:
    """Per module one rank (attention slots and groups padded with zero factors), scale 1, back to input dtype."""
    by_module: dict[str, list[str]] = {}
    for prefix, weight in weights.items():
        by_module.setdefault(weight.module, []).append(prefix)
    state: dict[str, Tensor] = {}
    configs: dict[str, LoraConfig] = {}
    ranks: dict[str, int] = {}
    for module, prefixes in sorted(by_module.items()):
        rank = max(b.shape[1] for p in prefixes for b, _ in results[p])
        template = next(inp for inp in inputs if module in inp.configs)
        dtype = next(t.dtype for k, t in template.state.items() if k.startswith(module + "."))
        for prefix in prefixes:
            weight = weights[prefix]
            bs, as_ = [], []
            for b, a in results[prefix]:
                pad = rank - b.shape[1]
                bs.append(torch.nn.functional.pad(b, (0, pad)))
                as_.append(torch.nn.functional.pad(a, (0, 0, 0, pad)))
            state[prefix + ".lora_A"] = torch.cat(as_).reshape(weight.groups * rank, *weight.a_tail).to(dtype)
            state[prefix + ".lora_B"] = torch.cat(bs).reshape(weight.out, rank, *weight.b_tail).to(dtype)
        slots = {p[len(module) + 1:] for p in prefixes if p != module}
        config: LoraConfig = template.configs[module]  # type: ignore[assignment]
        changes = dict(rank=rank, alpha=float(rank), rslora=False, dropout=0.0)
        if slots:
            changes["attention_projections"] = [s for s in ATTENTION_PROJECTIONS if s in slots]
        configs[module] = config.replace(**changes)  # type: ignore[assignment]
        ranks[module] = rank
    return state, configs, ranks


def _bound(name: str) -> Callable[..., CombineResult]:
    def fn(inputs: list[CombineInput], *, rank: int | None = None, **options: float) -> CombineResult:
        return merge(name, inputs, rank=rank, **options)
    fn.__name__ = f"merge_{name.replace('-', '_')}"
    return fn


# what each registered CombineMethod references (adapterhub_lite_lora.merges:merge_<name>)
merge_cat, merge_linear, merge_svd = _bound("cat"), _bound("linear"), _bound("svd")
merge_ties, merge_dare_linear, merge_dare_ties = _bound("ties"), _bound("dare-linear"), _bound("dare-ties")
merge_magnitude_prune = _bound("magnitude-prune")

"""The LoHa and LoKr configs: rank, alpha (scale = alpha / rank, as LyCORIS and PEFT compute it), and whether a
conv kernel is kept as a Tucker core (`tucker`), with the factor shapes each config builds on a weight."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from adapterhub_lite import AdapterConfig, ConfigError, help_field


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Two numbers whose product is `dimension`, as close as `factor` allows (-1: near the square root, the
    smaller first). PEFT's rule, which LyCORIS shares except for an explicit factor above the square root:
    PEFT keeps (factor, dimension // factor), LyCORIS puts the smaller first. Importers of LyCORIS files look
    for the factor that gives the file's shapes, so both layouts load."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (m, n) if m <= n else (n, m)


def _parse_shape(text: str) -> tuple[int, ...]:
    """OUT,IN from the command line."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"w1_shape must be two integers OUT,IN, got {text!r}"[:120], option="w1_shape") from None


TUCKER_HELP = ("a conv kernel bigger than 1x1 as a Tucker core (r, r, kh, kw) between two factor matrices instead of "
               "flattened (LyCORIS's use_tucker, PEFT's use_effective_conv2d)")


def tucker_kernel(weight_shape: tuple[int, ...], tucker: bool) -> tuple[int, ...] | None:
    """The kernel a Tucker core spans on a weight of this shape, or None: tucker off, a Linear, or a 1x1 kernel
    (which LyCORIS and PEFT keep flattened whatever the option says)."""
    kernel = tuple(weight_shape[2:])
    return kernel if tucker and any(k != 1 for k in kernel) else None


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}"[:120], option=name)


def _check_rank_alpha(rank: object, alpha: object) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive integer, got {rank!r}"[:120], option="rank")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a positive number, got {alpha!r}"[:120], option="alpha")


@dataclass(frozen=True)
class LohaConfig(AdapterConfig):
    """LoHa: delta W = (w1a @ w1b) * (w2a @ w2b) * alpha / rank (Hadamard product of two rank-r products)."""

    family: ClassVar[str] = "loha"

    rank: int = field(default=8, metadata=help_field("inner dimension r of each of the two products"))
    alpha: float = field(default=8.0, metadata=help_field("scale numerator: scale = alpha / r"))
    tucker: bool = field(default=False, metadata=help_field(TUCKER_HELP))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rank_alpha(self.rank, self.alpha)
        _check_flag("tucker", self.tucker)
        object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def factor_shapes(self, weight_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The factors this config builds on a weight of this shape, in the order they are drawn: flattened,
        w1a and w2a (out, r), w1b and w2b (r, in*kh*kw); with a Tucker kernel, each product is a core t
        (r, r, kh, kw) between w_a (r, out) and w_b (r, in), LyCORIS's and PEFT's layout alike."""
        out, r = weight_shape[0], self.rank
        kernel = tucker_kernel(weight_shape, self.tucker)
        if kernel is None:
            inp = math.prod(weight_shape[1:])
            return {"hada_w1_a": (out, r), "hada_w1_b": (r, inp), "hada_w2_a": (out, r), "hada_w2_b": (r, inp)}
        inp = weight_shape[1]
        return {"hada_t1": (r, r, *kernel), "hada_w1_a": (r, out), "hada_w1_b": (r, inp),
                "hada_t2": (r, r, *kernel), "hada_w2_a": (r, out), "hada_w2_b": (r, inp)}


@dataclass(frozen=True)
class LokrConfig(AdapterConfig):
    """LoKr: delta W = kron(w1, w2) * alpha / rank, each factor full or a rank-r product, as LyCORIS lays
    them out (the output and input sizes are split into two factors each)."""

    family: ClassVar[str] = "lokr"

    rank: int = field(default=8, metadata=help_field("rank of a factor that is decomposed"))
    alpha: float = field(default=8.0, metadata=help_field("scale numerator: scale = alpha / r"))
    decompose_both: bool = field(default=False, metadata=help_field("decompose the small factor w1 too"))
    decompose_factor: int = field(default=-1, metadata=help_field(
        "split sizes into factors near this one (-1: near the square root)"))
    tucker: bool = field(default=False, metadata=help_field(TUCKER_HELP + "; only a decomposed w2 has one"))
    w1_shape: tuple[int, ...] = field(default=(), metadata=help_field(
        "the small factor's shape OUT,IN, which fixes both splits (empty: from decompose_factor); files whose "
        "splits no single factor gives import with it", parse=lambda text: _parse_shape(text)))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rank_alpha(self.rank, self.alpha)
        object.__setattr__(self, "alpha", float(self.alpha))
        if isinstance(self.decompose_factor, bool) or not isinstance(self.decompose_factor, int) or (
                self.decompose_factor == 0 or self.decompose_factor < -1):
            raise ConfigError(f"decompose_factor must be -1 or a positive integer, got {self.decompose_factor!r}")
        _check_flag("decompose_both", self.decompose_both)
        _check_flag("tucker", self.tucker)
        shape = tuple(self.w1_shape) if isinstance(self.w1_shape, (list, tuple)) else None
        if shape is None or (shape and (len(shape) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                                for v in shape))):
            raise ConfigError(f"w1_shape must be two positive integers OUT,IN (or empty), got {self.w1_shape!r}"[:120],
                              option="w1_shape")
        object.__setattr__(self, "w1_shape", shape)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def factor_shapes(self, weight_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The factors this config builds on a weight of this shape, by name: (a, b) and (c, d) split the
        output and input sizes (`factorization`), w1 is (a, c), w2 is (b, d, *kernel); a factor is a rank-r
        product instead where PEFT's and LyCORIS's rules say so (w2 when r < max(b, d) / 2, w1 only with
        `decompose_both`), a decomposed conv w2 with `tucker` a core (r, r, kh, kw) between w2_a (r, b) and
        w2_b (r, d). The layer builds these; importers check files against them."""
        out, inp, *kernel = weight_shape
        if self.w1_shape:
            a, c = self.w1_shape
            if out % a or inp % c:
                raise ConfigError(f"w1_shape {a},{c} does not divide a {out}x{inp} weight", option="w1_shape")
            b, d = out // a, inp // c
        else:
            (a, b), (c, d) = factorization(out, self.decompose_factor), factorization(inp, self.decompose_factor)
        r = self.rank
        shapes: dict[str, tuple[int, ...]] = {}
        if self.decompose_both and r < max(a, c) / 2:
            shapes["lokr_w1_a"], shapes["lokr_w1_b"] = (a, r), (r, c)
        else:
            shapes["lokr_w1"] = (a, c)
        core = tucker_kernel(weight_shape, self.tucker)
        if r < max(b, d) / 2 and core is not None:  # w2 as a Tucker core between (r, b) and (r, d)
            shapes["lokr_t2"], shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (r, r, *core), (r, b), (r, d)
        elif r < max(b, d) / 2:  # a conv's decomposed w2 holds the kernel flattened into its second factor
            shapes["lokr_w2_a"], shapes["lokr_w2_b"] = (b, r), (r, d * math.prod(kernel))
        else:
            shapes["lokr_w2"] = (b, d, *kernel)
        return shapes

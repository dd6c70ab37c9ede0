"""How large a model a config or a card may make us build, checked before the memory is taken.

A config of a few hundred bytes can declare a model of any size (`num_hidden_layers: 10**6`, a vocabulary of
billions). A model source builds through `build_within_budget`: the build runs once on the meta device, where
tensors take no memory, while torch's registration hooks add up every parameter and buffer and count the
modules; past the budget it stops with one `ConfigError` line. Only a build that fits runs for real, again under
the budget (a build that cannot run on the meta device is still stopped, one tensor past the limit at most).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")
MAX_MODULES = 50_000  # an SDXL denoiser has about 3,000 modules, a 70B decoder about 1,300, a 64-expert MoE 3,500
LIMIT_VARIABLE = "ADAPTERS_MAX_MODEL_GB"


def budget_bytes() -> int:
    """ADAPTERS_MAX_MODEL_GB if set, else half of this machine's memory."""
    value = os.environ.get(LIMIT_VARIABLE, "").strip()
    if value:
        try:
            gigabytes = float(value)
        except ValueError:
            raise ConfigError(f"{LIMIT_VARIABLE} is {value!r}: give a number of gigabytes, e.g. 8") from None
        if not gigabytes > 0:
            raise ConfigError(f"{LIMIT_VARIABLE} is {value!r}: give a positive number of gigabytes")
        return int(gigabytes * (1 << 30))
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _over(what: str, detail: str, limit: int) -> ConfigError:
    return ConfigError(f"{what} declares a model {detail}, over the limit of {limit / (1 << 30):,.1f} GB (half this "
                       f"machine's memory unless {LIMIT_VARIABLE} is set): check the config's sizes, or raise "
                       f"{LIMIT_VARIABLE} if the model is meant to be that large")


@contextlib.contextmanager
def model_budget(what: str, limit: int | None = None) -> Iterator[None]:
    """Within this block, registering parameters and buffers past `limit` bytes, or more than MAX_MODULES
    modules, raises ConfigError (from the registration itself, so the build stops there)."""
    from torch.nn.modules import module as torch_module

    limit = budget_bytes() if limit is None else limit
    used, modules = [0], [0]

    def on_tensor(_module: Any, _name: str, tensor: Any) -> None:
        if tensor is not None:
            used[0] += tensor.numel() * tensor.element_size()
            if used[0] > limit:
                raise _over(what, f"of more than {used[0] / (1 << 30):,.1f} GB", limit)

    def on_module(_module: Any, _name: str, _child: Any) -> None:
        modules[0] += 1
        if modules[0] > MAX_MODULES:  # read here, so a test can lower it
            raise ConfigError(f"{what} declares a model of more than {MAX_MODULES:,} modules: check its sizes "
                              "(layer and block counts)")

    handles = [torch_module.register_module_parameter_registration_hook(on_tensor),
               torch_module.register_module_buffer_registration_hook(on_tensor),
               torch_module.register_module_module_registration_hook(on_module)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_declared_size(what: str, size: int, limit: int | None = None) -> None:
    """Refuse weights files that together hold more than the budget, before any of them is read."""
    limit = budget_bytes() if limit is None else limit
    if size > limit:
        raise _over(what, f"whose weights files hold {size / (1 << 30):,.1f} GB", limit)


def build_within_budget(build: Callable[[], T], what: str, preflight: bool = True) -> T:
    """`build()` run first on the meta device, then for real, both within the budget (see the module's text).
    Without `preflight` only the real run: for a load whose files' size `check_declared_size` already checked,
    where a meta-device run would read the checkpoint a second time."""
    import torch

    limit = budget_bytes()
    if not preflight:
        with model_budget(what, limit):
            return build()
    with model_budget(what, limit):
        try:
            with torch.device("meta"):
                build()
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - a build that needs real tensors: the real run below is still bounded
            pass
    with model_budget(what, limit):
        return build()

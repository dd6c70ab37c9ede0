"""DDPM noise schedule, training loss, and two samplers: full DDPM and fast DDIM (eta=0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub_lite import Progress


class Diffusion:
    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.steps = steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)

    def _at(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return values.to(t.device)[t].float()[:, None, None, None]

    def loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction MSE at a random step per sample; x0 in [-1, 1]."""
        t = torch.randint(0, self.steps, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        a = self._at(self.alpha_bar, t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(model(x_t, t), noise)

    @torch.no_grad()
    def ddim(self, model: nn.Module, shape: tuple[int, ...], steps: int = 25, seed: int = 0) -> torch.Tensor:
        """Deterministic DDIM sampling in `steps` steps; returns images in [-1, 1]."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=gen)
        times = torch.linspace(self.steps - 1, 0, steps).round().long().tolist()
        with Progress(len(times), f"sampling {shape[0]}") as bar:
            for i, t in enumerate(times):
                t_batch = torch.full((shape[0],), t, dtype=torch.long)
                eps = model(x, t_batch)
                a_t = self.alpha_bar[t].float()
                a_prev = self.alpha_bar[times[i + 1]].float() if i + 1 < len(times) else torch.tensor(1.0)
                x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
                bar.update(i + 1)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def ddpm(self, model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
        """Ancestral DDPM sampling over every step (slow; the reference sampler)."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=gen)
        for t in reversed(range(self.steps)):
            t_batch = torch.full((shape[0],), t, dtype=torch.long)
            eps = model(x, t_batch)
            beta, a_bar = self.betas[t].float(), self.alpha_bar[t].float()
            mean = (x - beta / (1 - a_bar).sqrt() * eps) / (1 - beta).sqrt()
            x = mean + (beta.sqrt() * torch.randn(shape, generator=gen) if t > 0 else 0)
        return x.clamp(-1, 1)

"""DDPM noise schedule, training loss, and two samplers: full DDPM and fast DDIM (eta=0).

What the network predicts is a choice made when a base is trained: the noise ("epsilon", as in
DDPM) or the velocity v = sqrt(a) * noise - sqrt(1 - a) * x0 ("v", as in progressive
distillation), where a is alpha_bar at the step. The samplers turn either back into the noise and
the clean image. `min_snr` weighs each sample's loss by min(SNR, gamma) / SNR (epsilon) or
min(SNR, gamma) / (SNR + 1) (v), SNR = a / (1 - a): the "Min-SNR" weighting of Hang et al. (2023),
which stops the nearly clean steps from dominating training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub_lite import ConfigError, Progress

PREDICTIONS = ("epsilon", "v")


class Diffusion:
    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 prediction: str = "epsilon", min_snr: float | None = None) -> None:
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction {prediction!r}: choose 'epsilon' or 'v' (a model argument)")
        if min_snr is not None and min_snr <= 0:
            raise ConfigError(f"min_snr is a positive gamma (e.g. 5), got {min_snr!r} (a model argument)")
        self.steps, self.prediction, self.min_snr = steps, prediction, min_snr
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)

    def _at(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return values.to(t.device)[t].float()[:, None, None, None]

    def loss(self, model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE of the prediction at a random step per sample, weighted per sample if `min_snr`; x0 in [-1, 1]."""
        t = torch.randint(0, self.steps, (x0.shape[0],), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        a = self._at(self.alpha_bar, t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if self.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        prediction = model(x_t, t)
        if self.min_snr is None:
            return F.mse_loss(prediction, target)
        per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
        snr = (a / (1 - a)).flatten()
        weight = snr.clamp(max=self.min_snr) / (snr if self.prediction == "epsilon" else snr + 1)
        return (per_sample * weight).mean()

    def noise_and_image(self, output: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output at x_t (alpha_bar a) as (predicted noise, predicted clean image)."""
        if self.prediction == "epsilon":
            return output, (x_t - (1 - a).sqrt() * output) / a.sqrt()
        return a.sqrt() * output + (1 - a).sqrt() * x_t, a.sqrt() * x_t - (1 - a).sqrt() * output

    @torch.no_grad()
    def ddim(self, model: nn.Module, shape: tuple[int, ...], steps: int = 25, seed: int = 0) -> torch.Tensor:
        """Deterministic DDIM sampling in `steps` steps; returns images in [-1, 1]."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=gen)
        times = torch.linspace(self.steps - 1, 0, steps).round().long().tolist()
        with Progress(len(times), f"sampling {shape[0]}") as bar:
            for i, t in enumerate(times):
                t_batch = torch.full((shape[0],), t, dtype=torch.long)
                a_t = self.alpha_bar[t].float()
                a_prev = self.alpha_bar[times[i + 1]].float() if i + 1 < len(times) else torch.tensor(1.0)
                eps, x0 = self.noise_and_image(model(x, t_batch), x, a_t)
                x0 = x0.clamp(-1, 1)
                if self.prediction == "v":  # the noise that agrees with the clamped image
                    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
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
            beta, a_bar = self.betas[t].float(), self.alpha_bar[t].float()
            eps, _ = self.noise_and_image(model(x, t_batch), x, a_bar)
            mean = (x - beta / (1 - a_bar).sqrt() * eps) / (1 - beta).sqrt()
            x = mean + (beta.sqrt() * torch.randn(shape, generator=gen) if t > 0 else 0)
        return x.clamp(-1, 1)

"""A small DDPM UNet for 32x32 images: sinusoidal time embedding, residual blocks,
self-attention (nn.MultiheadAttention, so LoRA can target it) at the low resolutions.

Default: channels 32/64/64, attention at 8x8, about 0.9M parameters. `prediction` and `min_snr` are the
training objective (see diffusion.py); they are part of the config so the weights are always sampled,
and adapters on them trained, the way the base was.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .diffusion import Diffusion


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) integer steps -> (N, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, t_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(t_dim, out_ch)
        self.norm2 = nn.GroupNorm(8, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(t_emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, H*W, C)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class Level(nn.Module):
    """One resolution: a residual block, then attention if this resolution has it."""

    def __init__(self, in_ch: int, out_ch: int, t_dim: int, attention: bool, dropout: float) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, t_dim, dropout)
        self.attn = AttentionBlock(out_ch) if attention else None

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, t_emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, channels: tuple[int, ...] = (32, 64, 64), image_size: int = 32,
                 attention_resolutions: tuple[int, ...] = (8,), dropout: float = 0.0, prediction: str = "epsilon",
                 min_snr: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        Diffusion(prediction=prediction, min_snr=min_snr)  # an unknown objective is refused now, not when trained
        self.prediction, self.min_snr = prediction, min_snr
        t_dim = channels[0] * 4
        self.t_dim = channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        sizes = [image_size // 2**i for i in range(len(channels))]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels, ch = [], channels[0]
        for i, (out_ch, size) in enumerate(zip(channels, sizes)):
            self.down.append(Level(ch, out_ch, t_dim, size in attention_resolutions, dropout))
            ch = out_ch
            skip_channels.append(ch)
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid1 = Level(ch, ch, t_dim, True, dropout)
        self.mid2 = ResBlock(ch, ch, t_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(channels))):
            out_ch = channels[i]
            self.up.append(Level(ch + skip_channels[i], out_ch, t_dim, sizes[i] in attention_resolutions, dropout))
            ch = out_ch
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_norm = nn.GroupNorm(8, ch)
        self.out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(timestep_embedding(t, self.t_dim))
        h = self.stem(x)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, t_emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid1(h, t_emb), t_emb)
        for i, level in enumerate(self.up):
            h = level(torch.cat([h, skips.pop()], dim=1), t_emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))

"""RichBoyNet: the seed notebook's MLP, 784-1000-2000-10 with ReLU."""

from __future__ import annotations

import torch
from torch import nn


class RichBoyNet(nn.Module):
    def __init__(self, hidden1: int = 1000, hidden2: int = 2000, num_classes: int = 10) -> None:
        super().__init__()
        self.linear1 = nn.Linear(28 * 28, hidden1)
        self.linear2 = nn.Linear(hidden1, hidden2)
        self.linear3 = nn.Linear(hidden2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (N, 1, 28, 28) -> (N, 784)
        x = torch.relu(self.linear1(x))
        x = torch.relu(self.linear2(x))
        return self.linear3(x)

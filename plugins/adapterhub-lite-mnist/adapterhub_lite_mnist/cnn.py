"""The MNIST CNN of the seed notebook: three 5x5 conv + pool stages, then four Linear layers."""

from __future__ import annotations

import torch
from torch import nn


class MnistCNN(nn.Module):
    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.conv3 = nn.Conv2d(64, 64, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(64 * 3 * 3, 288)
        self.fc2 = nn.Linear(288, 144)
        self.fc3 = nn.Linear(144, 72)
        self.fc4 = nn.Linear(72, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # (N, 32, 14, 14)
        x = self.pool(torch.relu(self.conv2(x)))  # (N, 64, 7, 7)
        x = self.pool(torch.relu(self.conv3(x)))  # (N, 64, 3, 3)
        x = self.dropout(x.flatten(1))  # (N, 576)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = torch.relu(self.fc3(x))
        return self.fc4(x)

"""The user-style models the law suite runs on: an MLP, Conv+BatchNorm, an LSTM tagger, a
residual-block model and a conv net in one Sequential (where every growth event has a place).
Plain ``nn.Module`` classes, as a user would write them."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A 3-layer perceptron."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                                 nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBN(nn.Module):
    """Conv2d + BatchNorm2d + a linear head (BatchNorm's running stats are per-particle state)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Tagger(nn.Module):
    """An LSTM sequence tagger: token ids in, one score per tag and token out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.out = nn.Linear(5, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(tokens))
        return self.out(h)


class Block(nn.Module):
    """A pre-norm residual block."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(self.norm(x)))


class ResNet(nn.Module):
    """A stem, two residual blocks in a ModuleList, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([Block(4), Block(4)])
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class ConvStack(nn.Module):
    """A conv net in one Sequential, where every growth event has a place: Conv2d + BatchNorm2d,
    Conv2d + GroupNorm, pooling, a flatten, a Linear + LayerNorm, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
            nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * 2 * 2, 3), nn.LayerNorm(3), nn.Tanh(), nn.Linear(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"MLP": torch.randn(5, 3, generator=gen),
            "ConvBN": torch.randn(4, 2, 5, 5, generator=gen),
            "Tagger": torch.randint(0, 10, (2, 6), generator=gen),
            "ResNet": torch.randn(5, 3, generator=gen),
            "ConvStack": torch.randn(4, 2, 5, 5, generator=gen)}

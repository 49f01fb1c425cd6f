"""An example mtkd plugin (see pyproject.toml for the entry points that register it)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import TensorDataset

import mtkd


def tiny_seq(num_classes: int, in_chans: int) -> nn.Module:
    """A plain nn.Sequential CNN (no timm protocol: features read at its last Linear)"""
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )  # fmt: skip


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)


def digits_float() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as float TensorDatasets in [0, 1] (first 1400 train, the rest test)"""
    x, y = _digits()
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def digits_logreg() -> mtkd.ModuleTeacher:
    """A teacher of yours: logistic regression on the digits' pixels, as Flatten + Linear.

    It reads pixels in [0, 1] (mean 0, std 1: no normalisation) at 8x8; fitted on the train part
    only, deterministically (lbfgs)."""
    x, y = _digits()
    fit = LogisticRegression(max_iter=2000, C=1.0).fit(x[:1400].flatten(1).numpy(), y[:1400].numpy())
    linear = nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.asarray(fit.coef_, dtype=np.float32)))
        linear.bias.copy_(torch.from_numpy(np.asarray(fit.intercept_, dtype=np.float32)))
    return mtkd.ModuleTeacher(nn.Sequential(nn.Flatten(), linear), mean=[0.0], std=[1.0], input_size=8)

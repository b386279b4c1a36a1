"""IResNet, the face-recognition backbone of ArcFace (Deng et al., ArcFace, arXiv 1801.07698, §3.2 and insightface's
``iresnet``; the "improved residual" unit BN-conv-BN-PReLU-conv-BN of Duta et al., arXiv 2004.04989): a 3x3 stem at
full resolution, four stages that halve the side, then BN, dropout, a fully connected embedding layer and BN.

Depths as in insightface: ``iresnet18`` (2, 2, 2, 2), ``iresnet34`` (3, 4, 6, 3), ``iresnet50`` (3, 4, 14, 3),
``iresnet100`` (3, 13, 30, 3); ``tiny`` (1, 1, 1, 1) with ``width`` 8 is for tests. The input side must be a multiple
of 16 (112 in the paper's setting, 112 x 112 aligned faces).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SameIdError

DEPTHS = {"tiny": (1, 1, 1, 1), "iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
          "iresnet100": (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(inplanes, eps=1e-5),
            nn.Conv2d(inplanes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
            nn.PReLU(planes),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.body(x) + identity


class IResNet(nn.Module):
    """``IResNet(depth, embedding_size=512, width=64, image_size=112)``: (B, 3, S, S) in [-1, 1] -> (B, E)."""

    def __init__(self, depth: str = "iresnet50", embedding_size: int = 512, width: int = 64, image_size: int = 112,
                 dropout: float = 0.0):
        super().__init__()
        if depth not in DEPTHS:
            raise SameIdError(f"unknown backbone {depth!r}; choose one of: {', '.join(DEPTHS)}")
        if image_size % 16:
            raise SameIdError(f"image size must be a multiple of 16 (112 for faces), got {image_size}")
        widths = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width, eps=1e-5),
                                  nn.PReLU(width))
        stages, inplanes = [], width
        for planes, blocks in zip(widths, DEPTHS[depth], strict=True):
            layers = [IBasicBlock(inplanes, planes, stride=2)]
            layers += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        side = image_size // 16
        self.bn = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(inplanes * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # insightface's fixed feature scale
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stages(self.stem(x)))
        return self.features(self.fc(self.dropout(torch.flatten(x, 1))))

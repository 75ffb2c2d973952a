"""A small ResNet written the way model zoos write them (torchvision's BasicBlock, shrunk for 16×16 images).

Nothing here knows about bnstats: the sweep config names `resnet.py:resnet8` and sets `model.place = "auto"`,
and bnstats rewrites each arm's copy of this model so that its norms sit before the activation, after it,
or not at all (`bnstats.nn.place`). Parameter names stay those of this file, so every arm of a seed starts
from the same weights wherever the architecture lets it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)  # one module used twice, in place: as torchvision does
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.inplanes = width
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():  # the usual ResNet initialisation; bnstats keeps it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))  # F.relu in forward: place() turns it into a module of its own
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def resnet8(in_shape: tuple[int, ...], num_classes: int, width: int = 16) -> ResNet:
    """The factory bnstats calls once per arm and seed: `in_shape` and `num_classes` come from the data,
    `width` from the config's [model] section (or a [grid] list)."""
    return ResNet([1, 1, 1], num_classes=num_classes, in_channels=in_shape[0], width=width)

"""ResNet backbones with torchvision's module names, a CIFAR stem and a width option.

The state dict of `ResNet(arch, width=64, cifar_stem=False)` loads into
`torchvision.models.<arch>()` (strict, apart from the absent `fc`), so checkpoints are usable
outside this repo. The network is a stem plus four stages: `forward_stages(x, upto=i)` returns
each stage's output and stops after stage i (later stages are not run), which is what
intermediate losses and partial back-propagation need (the paper's block i = stage i, with the
stem inside block 1).
"""
import torch
import torch.nn as nn

from common.config import ConfigError


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


# The two residual blocks with torchvision's module names, module creation order (so the same
# seed gives the same initial weights) and the stride on the 3x3 convolution (ResNet v1.5).
# Written here rather than imported: importing torchvision pulls in torch._dynamo and adds over a
# second to the start of every training process.
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(inplanes, planes, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(inplanes, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * 4), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))

ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    def __init__(self, arch="resnet50", width=64, cifar_stem=False, zero_init_residual=False):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"model.arch '{arch}' is not one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        self.arch, self.inplanes = arch, width
        if cifar_stem:  # 32 px images: keep the full resolution into stage 1
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.stage_channels = [width * m * block.expansion for m in (1, 2, 4, 8)]
        self.num_features = self.stage_channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage(self, i):
        """Stage i (1-4) as a module; block i of the intermediate-loss paper is stem + stage 1
        for i = 1, stage i otherwise."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)[i - 1]

    def forward_stages(self, x, upto=4):
        """Feature maps after stages 1..upto (the stem belongs to block 1); stages after `upto`
        are not computed."""
        x = self.stem(x)
        feats = []
        for i in range(1, upto + 1):
            x = self.stage(i)(x)
            feats.append(x)
        return feats

    def compile_units(self):
        """What train.compile compiles (common/run.py): the four stages; the stem stays eager."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        """Globally pooled features of the last stage: [B, num_features]."""
        return torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1)


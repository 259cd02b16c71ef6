"""DispNet-style depth network of SfMLearner (Zhou et al. 2017), as the thesis uses it (ch. 2,
sec. 2.4): a fully convolutional encoder-decoder of 3x3 convolution + BN + ReLU blocks with skip
connections and predictions at 4 scales, each turned into depth by Eq. 2.5:

    D = 1 / (s * sigmoid(X) + m),   s = 0.4, m = 0.0125  ->  D in (1 / (s + m), 1 / m) = (2.42, 80) m

Encoder level i (i = 0..levels-1) halves the resolution with a stride-2 block followed by a
stride-1 block; channels double from `width` up to 16 x width (SfMLearner: 32 ... 512). Decoder
level i upsamples to the resolution of encoder level i - 1 (the input for i = 0), applies a block,
concatenates the skip features and the upsampled coarser prediction (at the prediction scales),
and applies another block; channels width/2 ... 16 x width (SfMLearner: 16 ... 512). Any input
size works (sizes that are not multiples of 2^levels are matched by resizing to the skip's size).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def disp_to_depth(x, scale=0.4, min_disp=0.0125):
    """Eq. 2.5: logits X -> depth 1 / (s sigmoid(X) + m)."""
    return 1.0 / (scale * torch.sigmoid(x) + min_disp)


def block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DispNet(nn.Module):
    def __init__(self, width=32, levels=7, scales=4, scale=0.4, min_disp=0.0125):
        super().__init__()
        if not 1 <= scales <= levels:
            raise ValueError(f"need 1 <= scales ({scales}) <= levels ({levels})")
        self.scale, self.min_disp, self.scales = scale, min_disp, scales
        enc = [min(width * 2 ** i, 16 * width) for i in range(levels)]
        dec = [min(max(width // 2, 1) * 2 ** i, 16 * width) for i in range(levels)]
        self.encoder = nn.ModuleList(
            nn.Sequential(block(enc[i - 1] if i else 3, enc[i], 2), block(enc[i], enc[i])) for i in range(levels))
        self.up = nn.ModuleList()
        self.iconv = nn.ModuleList()
        self.predict = nn.ModuleList()
        for i in reversed(range(levels)):
            below = enc[-1] if i == levels - 1 else dec[i + 1]
            skip = enc[i - 1] if i > 0 else 0
            coarser_pred = 1 if i < scales - 1 else 0
            self.up.append(block(below, dec[i]))
            self.iconv.append(block(dec[i] + skip + coarser_pred, dec[i]))
            if i < scales:
                self.predict.append(nn.Conv2d(dec[i], 1, 3, 1, 1))
        self.levels = levels

    def forward(self, x):
        """-> list of `scales` depth maps [B, 1, H / 2^k, W / 2^k], finest (k = 0) first."""
        feats, f = [], x
        for enc in self.encoder:
            f = enc(f)
            feats.append(f)
        depths, logits = [], None
        for j, i in enumerate(reversed(range(self.levels))):
            size = feats[i - 1].shape[-2:] if i > 0 else x.shape[-2:]
            f = self.up[j](F.interpolate(f, size=size, mode="nearest"))
            parts = [f] + ([feats[i - 1]] if i > 0 else [])
            if logits is not None:
                parts.append(F.interpolate(logits, size=size, mode="bilinear", align_corners=False))
            f = self.iconv[j](torch.cat(parts, 1))
            if i < self.scales:
                logits = self.predict[self.scales - 1 - i](f)
                depths.append(disp_to_depth(logits, self.scale, self.min_disp))
        return depths[::-1]


def build_dispnet(model_cfg):
    return DispNet(model_cfg.width, model_cfg.levels, model_cfg.scales, model_cfg.scale, model_cfg.min_disp)

"""DINO (Caron et al., ICCV 2021): self-distillation of a momentum teacher into a student, with
centring and sharpening of the teacher's output, on multi-crop views.

    P_t(x) = softmax((g_t(x) - c) / tau_t),  P_s(x) = softmax(g_s(x) / tau_s)
    loss = mean over (teacher global view i, student view v != i) of H(P_t(x_i), P_s(x_v))
    c <- m c + (1 - m) mean of g_t over the global views of the global batch  (DINO Eq. 4)

The centre's batch mean is summed over ranks (all_reduce), so every rank holds the same centre.
Student and teacher are backbone + DINO head (3-layer MLP, 2048 hidden, 256 bottleneck, L2
normalisation, weight-normalised linear layer to out_dim; GELU, BN only with use_bn_in_head as
the paper's ResNet-50 run); the teacher is an EMA of the student (0.996 -> 1, cosine).
Defaults from the DINO paper (ViT-S/16 recipe): out_dim 65536, tau_s = 0.1, tau_t warmed up
linearly from 0.04 to 0.07 over the first 30 epochs, centre momentum 0.9, the last layer frozen
during the first epoch; multi-crop 2 x 224 (scale 0.4-1) + 8 x 96 (0.05-0.4) is set through
data.local_views (yaml/methods/). kNN and linear evaluation use the teacher's backbone.

Pairs, for Hard Augment and extra targets: pair_loss(a, b) of two global views is the
symmetric (H(P_t(a), P_s(b)) + H(P_t(b), P_s(a))) / 2 per sample, with the current centre and
teacher temperature. Local views are never teachers, and they are not ranked: Hard Augment
picks the 2 global views, the local crops are added afterwards.

ViT sequence compression (NeurIPS'24, accel/token_dropout.py) applies to the global views only:
the student gets the query setting, the teacher the key setting; the student pass over the local
crops calls the backbone plainly (sec. 6.4).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import dist
from common.precision import upcast
from selfsup.base import SSLMethod, backbone_forward, mlp, ordered_pairs, query_key
from selfsup.momentum import MomentumTarget, momentum_schedule
from selfsup.registry import register

DEFAULTS = {
    "out_dim": 65536,
    "hidden_dim": 2048,
    "bottleneck_dim": 256,
    "use_bn_in_head": False,     # the paper's ResNet-50 run: true
    "norm_last_layer": True,     # weight-norm scale fixed to 1 (more stable, DINO sec. 4)
    "student_temp": 0.1,
    "teacher_temp": 0.07,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 30.0,
    "center_momentum": 0.9,
    "ema": 0.996,
    "ema_schedule": "cosine",
    "freeze_last_layer_epochs": 1.0,
}


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose rows are normalised: W = g v / ||v|| (weight
    normalisation); g is fixed to 1 unless learn_scale."""

    def __init__(self, dim_in, dim_out, learn_scale=False):
        super().__init__()
        self.v = nn.Parameter(torch.empty(dim_out, dim_in))
        nn.init.trunc_normal_(self.v, std=0.02)
        self.g = nn.Parameter(torch.ones(dim_out, 1), requires_grad=learn_scale)

    def forward(self, x):
        return F.linear(x, self.g * F.normalize(self.v, dim=1))


class DINOHead(nn.Module):
    def __init__(self, dim_in, cfg):
        super().__init__()
        self.mlp = mlp([dim_in, cfg.hidden_dim, cfg.hidden_dim, cfg.bottleneck_dim], last_bn=False,
                       bn=cfg.use_bn_in_head, act=nn.GELU)
        self.last_layer = WeightNormLinear(cfg.bottleneck_dim, cfg.out_dim, learn_scale=not cfg.norm_last_layer)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def teacher_temperature_schedule(total_steps, steps_per_epoch, start, end, warmup_epochs):
    """tau_t per step: linear from `start` to `end` over warmup_epochs, then constant."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    t = np.arange(total_steps, dtype=np.float64)
    return np.where(t < warm, start + (end - start) * t / max(warm, 1), end)


def distillation_loss(teacher_logits, student_logits, center, teacher_temp, student_temp):
    """Per-sample H(P_t, P_s) = -sum_k P_t,k log P_s,k with the centred, sharpened teacher."""
    p_t = F.softmax((upcast(teacher_logits) - center) / teacher_temp, dim=-1)
    return -(p_t * F.log_softmax(upcast(student_logits) / student_temp, dim=-1)).sum(-1)


@register("dino", DEFAULTS)
class DINO(SSLMethod):
    has_target = True

    def __init__(self, backbone, cfg):
        super().__init__(backbone)
        self.head = DINOHead(backbone.num_features, cfg)
        self.teacher = MomentumTarget(self.backbone, self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.cfg = cfg
        self.ema = self.teacher_temp = None
        self.freeze_last_layer_steps = 0

    budget_schedules = ("teacher_temp",)   # the teacher temperature's warm-up is counted in epochs

    def prepare(self, total_steps, steps_per_epoch):
        c = self.cfg
        self.ema = momentum_schedule(c.ema_schedule, c.ema, total_steps)
        self.teacher_temp = teacher_temperature_schedule(total_steps, steps_per_epoch, c.warmup_teacher_temp,
                                                         c.teacher_temp, c.warmup_teacher_temp_epochs)
        self.freeze_last_layer_steps = int(round(c.freeze_last_layer_epochs * steps_per_epoch))

    def current_teacher_temp(self):
        if self.teacher_temp is None:
            return self.cfg.teacher_temp
        return float(self.teacher_temp[min(self.step, len(self.teacher_temp) - 1)])

    def schedule_values(self):
        return dict(super().schedule_values(), teacher_temp=self.current_teacher_temp())

    def student(self, x, compression=None):
        """Student logits; `compression`: the query setting (token_dropout.SeqCompression or None)."""
        return self.head(backbone_forward(self.backbone, x, compression))

    def embed(self, views, compression=None):
        """Per (global) view (student logits, teacher logits): the student with the query setting,
        the teacher with the key setting and without gradient."""
        query, key = query_key(compression)
        return [(self.student(v, query), self.teacher(v, key)) for v in views]

    def h(self, teacher_logits, student_logits):
        return distillation_loss(teacher_logits, student_logits, self.center, self.current_teacher_temp(),
                                 self.cfg.student_temp)

    def pair_loss(self, a, b):
        return 0.5 * (self.h(a[1], b[0]) + self.h(b[1], a[0]))

    def forward(self, views, pairs=None, targets=None, local_views=None, compression=None):
        outs = self.embed(views, compression)
        # NeurIPS'24 sec. 6.4: the small crops are already short sequences; they are never
        # compressed, whatever compression the global views get
        local_students = [self.student(v) for v in local_views or []]
        students = [s for s, _ in outs] + local_students
        ordered = ordered_pairs(len(outs), len(students), pairs)
        return self.mean_loss([self.h(outs[i][1], students[v]).mean() for i, v in ordered], outs, pairs, targets)

    @torch.no_grad()
    def update_state(self, outs, pairs):
        """Centre update (DINO Eq. 4) with the teacher outputs of all global views, all ranks."""
        t = upcast(torch.cat([t for _, t in outs], 0))
        total = dist.all_reduce_sum(torch.cat([t.sum(0), torch.full((1,), t.shape[0], dtype=t.dtype, device=t.device)]))
        batch_center = total[:-1] / total[-1]
        m = self.cfg.center_momentum
        self.center.mul_(m).add_((1 - m) * batch_center[None])

    def after_backward(self, step):
        if step < self.freeze_last_layer_steps:  # DINO: the last layer stays fixed at first
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step(self, step):
        self.teacher.update([self.backbone, self.head], self.ema[step])

    def eval_backbone(self):
        return self.teacher.nets[0]

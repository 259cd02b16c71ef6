"""Intermediate contrastive losses around any method (intermediate-loss paper, sec. 2.2-2.3).

`BlockwiseMethod` holds the backbone (a ResNet: stem + 4 stages, block i = stage i with the stem
in block 1), an EMA copy of it when the method has a momentum network, and one head per block:
head i is the configured method itself (its projector, predictor, prototypes, queue, centre,
temperatures) built on top of a `BlockPool` "backbone" that global-average-pools block i's map,
so it is sized for that block's channels. Head n is the method's own final head. Every
method's code runs unchanged, and each block keeps its own queue (MoCo), prototypes (SwAV) or
centre (DINO).

A head's input is a `BlockMaps` (online map, target map): its BlockPool pools the online map,
and the BlockPool copy inside its momentum target pools the target network's map at the same
block, so "the momentum encoder runs to the same block without gradients". MoCo's shuffled BN
is not applied in the heads (MoCo's heads have no BN); on several GPUs use train.sync_bn=true.

Per step (train_ssl.py calls the hooks): begin_step draws the block i whose loss trains
(partial back-propagation, accel/partial_backprop.py) or, without it, every block's loss
trains (their mean); forward runs the stages up to i, with block-wise hard pair selection
(accel/hard_pairs.py) after the blocks in pair_blocks; after_backward drops the gradients of
everything that took no part; on_step updates the momentum networks.
"""
import torch
import torch.nn as nn

import selfsup
from accel import hard_pairs, partial_backprop
from common import rng
from common.config import ConfigError
from selfsup.base import SSLMethod
from selfsup.momentum import MomentumTarget


class BlockMaps:
    """A head's input: the online network's feature map and, for momentum methods, the
    target network's map of the same images at the same block."""

    def __init__(self, online, target=None):
        self.online, self.target = online, target


class BlockPool(nn.Module):
    """Global average pooling of a block's map: the 'backbone' of a block head."""

    def __init__(self, channels):
        super().__init__()
        self.num_features, self.side = channels, "online"

    def forward(self, x):
        m = x.online if self.side == "online" else x.target
        if m is None:
            raise RuntimeError("a momentum head needs the target network's map")
        return m.float().mean((2, 3)).to(m.dtype)


def _momentum_targets(head):
    return [m for m in head.modules() if isinstance(m, MomentumTarget)]


class BlockwiseMethod(SSLMethod):
    def __init__(self, method_cfg, backbone, il_cfg, seed=0):
        super().__init__(backbone)
        if not hasattr(backbone, "forward_stages"):
            raise ConfigError("interloss needs a ResNet backbone (stem + 4 stages); got model.arch "
                              f"'{getattr(backbone, 'arch', type(backbone).__name__)}'")
        if il_cfg.bp_scheme not in partial_backprop.SCHEMES:
            raise ConfigError(f"interloss.bp_scheme '{il_cfg.bp_scheme}' is not one of {', '.join(partial_backprop.SCHEMES)}")
        if il_cfg.pair_pick not in hard_pairs.PICKS:
            raise ConfigError(f"interloss.pair_pick '{il_cfg.pair_pick}' is not one of {', '.join(hard_pairs.PICKS)}")
        self.n = len(backbone.stage_channels)
        bad = [b for b in il_cfg.pair_blocks if not 1 <= b < self.n]
        if bad:
            raise ConfigError(f"interloss.pair_blocks {list(il_cfg.pair_blocks)}: blocks must be in 1..{self.n - 1}")
        if not 0 < il_cfg.crop <= 1 or il_cfg.candidates < 1:
            raise ConfigError(f"interloss.crop must be in (0, 1] and candidates >= 1; got {il_cfg.crop}, {il_cfg.candidates}")
        self.cfg, self.seed = il_cfg, seed
        self.probs = partial_backprop.loss_probabilities(il_cfg.loss_probs, self.n)
        self.heads = nn.ModuleList(selfsup.build_method(method_cfg, BlockPool(c)) for c in backbone.stage_channels)
        self.has_target = self.heads[-1].has_target
        for head in self.heads:
            if hasattr(head, "shuffle_bn"):
                head.shuffle_bn = False
            for t in _momentum_targets(head):
                t.nets[0].side = "target"
        self.target = MomentumTarget(backbone) if self.has_target else None
        self.block, self.updated = self.n, list(range(1, self.n + 1))

    # ---- per-step hooks
    def prepare(self, total_steps, steps_per_epoch):
        for h in self.heads:
            h.prepare(total_steps, steps_per_epoch)

    def follow_budget(self, follow):
        for h in self.heads:
            h.follow_budget(follow)

    def begin_step(self, step):
        super().begin_step(step)
        c = self.cfg
        if c.partial_backprop and c.bp_scheme in ("to_input", "nearby"):
            self.block = partial_backprop.draw_block(step, self.seed, self.probs)
            lo = 1 if c.bp_scheme == "to_input" else max(1, self.block - c.nearby_blocks + 1)
            self.updated = list(range(lo, self.block + 1))
        elif c.partial_backprop:  # skipping: final loss, a random non-adjacent set of blocks updated
            self.block = self.n
            self.updated = partial_backprop.draw_skipping_set(step, self.seed, self.n)
        else:
            self.block, self.updated = self.n, list(range(1, self.n + 1))
        for h in self.heads:
            h.begin_step(step)

    def block_params(self, i):
        stage = list(self.backbone.stage(i).parameters())
        if i == 1:
            stage = [p for n, p in self.backbone.named_parameters() if n.startswith(("conv1.", "bn1."))] + stage
        return stage

    def after_backward(self, step):
        """Everything outside blocks `updated` and the trained heads keeps its weights and optimizer
        state (gradient None, not zero)."""
        trained = self.trained_heads()
        for i in range(1, self.n + 1):
            if i not in self.updated:
                partial_backprop.drop_grads(self.block_params(i))
            if i in trained:
                self.heads[i - 1].after_backward(step)
            else:
                partial_backprop.drop_grads(self.heads[i - 1].parameters())

    def trained_heads(self):
        return [self.block] if self.cfg.partial_backprop else list(range(1, self.n + 1))

    def on_step(self, step):
        if self.target is not None:
            self.target.update([self.backbone], self.heads[-1].ema[step])
        for h in self.heads:
            h.on_step(step)

    # ---- the network, block by block
    def _stem(self, views, grad):
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            online = [self.backbone.stem(v) for v in views]
        target = None
        if self.target is not None:
            with torch.no_grad():
                target = [self.target.nets[0].stem(v) for v in views]
        return online, target

    def run(self, views, upto, local_views=None, select=True):
        """Per block j <= upto: (online maps, target maps, local online maps) before selection;
        hard pairs after the blocks in pair_blocks (before upto) shrink what later blocks see."""
        c = self.cfg
        skipping = c.partial_backprop and c.bp_scheme == "skipping"
        first_grad = min(self.updated) if c.partial_backprop and c.bp_scheme == "nearby" else 1
        online, target = self._stem(views, grad=first_grad == 1)
        local = self._stem(local_views, grad=first_grad == 1)[0] if local_views else []
        gen = rng.generator(self.seed, rng.Stream.BLOCKWISE, self.step)
        out = {}
        for j in range(1, upto + 1):
            stage = self.backbone.stage(j)
            grad = torch.is_grad_enabled() and j >= first_grad
            frozen = skipping and j not in self.updated
            if frozen:  # skipping: input gradients flow through, no weight gradients here
                stage.requires_grad_(False)
            try:
                with torch.set_grad_enabled(grad):
                    online = [stage(x) for x in online]
                    local = [stage(x) for x in local]
            finally:
                if frozen:
                    stage.requires_grad_(True)
            if target is not None:
                with torch.no_grad():
                    target = [self.target.nets[0].stage(j)(t) for t in target]
            out[j] = (online, target, local)
            if select and c.hard_pairs and j in c.pair_blocks and j < upto:
                if len(online) != 2:
                    raise ConfigError(f"interloss.hard_pairs works on 2 global views, got {len(online)}")
                head = self.heads[j - 1]
                if c.pair_pick == "hard_example":
                    online, target, _ = hard_pairs.select_hard_examples(head, BlockMaps, online, target, c.crop)
                    local = []  # the dropped samples' local views go too (batch sizes must agree)
                else:
                    online, target, *_ = hard_pairs.select_crops(head, BlockMaps, online, target, c.crop,
                                                                   c.candidates, c.pair_pick, gen)
        return out

    @staticmethod
    def _inputs(entry):
        online, target, local = entry
        views = [BlockMaps(o, None if target is None else target[k]) for k, o in enumerate(online)]
        return views, [BlockMaps(x) for x in local]

    # ---- the SSLMethod interface
    @staticmethod
    def _no_compression(compression):
        """A block-wise run is a ResNet (stem + stages): ViT sequence compression has nothing to act on."""
        if compression is not None:
            raise ValueError("interloss (BlockwiseMethod) runs a ResNet: ViT sequence compression does not apply")

    def embed(self, views, compression=None):
        """The final head's outputs on full maps (Hard Augment ranks views with it)."""
        self._no_compression(compression)
        return self.heads[-1].embed(self._inputs(self.run(views, self.n, select=False)[self.n])[0])

    def pair_loss(self, a, b):
        return self.heads[-1].pair_loss(a, b)

    def forward(self, views, pairs=None, targets=None, local_views=None, compression=None):
        self._no_compression(compression)
        out = self.run(views, self.block, local_views)
        losses = {}
        for i in self.trained_heads():
            v, loc = self._inputs(out[i])
            # Hard Augment's extra targets are outputs of the final head: only its loss uses them
            losses[i] = self.heads[i - 1](v, pairs, targets if i == self.n else None, loc or None)["loss"]
        return {"loss": torch.stack(list(losses.values())).mean(), "block_losses": losses}

    def param_groups(self):
        groups = [{"params": [p for p in self.backbone.parameters() if p.requires_grad]}]
        for h in self.heads:
            groups += [g for g in h.param_groups() if g["params"]]
        return groups

    def eval_backbone(self):
        if type(self.heads[-1]).eval_backbone is not SSLMethod.eval_backbone and self.target is not None:
            return self.target.nets[0]  # DINO evaluates its teacher
        return self.backbone

    def schedule_values(self):
        return dict(self.heads[-1].schedule_values(), block=self.block)

    def ledger_key(self):
        """What the cost of a step depends on beyond resolution and views: the block trained."""
        return (self.block, tuple(self.updated))

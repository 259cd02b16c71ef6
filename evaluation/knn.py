"""Weighted kNN evaluation on L2-normalised features (Wu et al. 2018; the SSL monitoring
standard): each test sample votes with its k nearest training samples by cosine similarity,
each vote weighted exp(sim / T). Defaults k = 200, T = 0.07."""
import torch
import torch.nn.functional as F

from common import dist
from common.precision import upcast


@torch.no_grad()
def extract_features(backbone, loader, augment, device, channels_last=False, amp_dtype=None):
    """Features and labels of a (rank-sharded) eval loader, gathered over ranks and put back in
    dataset order. The backbone runs in eval mode (running BN statistics); its mode is restored."""
    was_training = backbone.training
    backbone.eval()
    dtype = next(backbone.parameters()).dtype   # float64 in train.float64 runs, else float32
    feats, labels, idx = [], [], []
    for batch in loader:
        x = augment.eval_batch(batch["image"].to(device, non_blocking=True), channels_last).to(dtype)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            f = backbone(x)
        feats.append(upcast(f))
        labels.append(batch["label"].to(device))
        idx.append(batch["index"].to(device))
    backbone.train(was_training)
    feats = dist.all_gather_variable(torch.cat(feats))
    labels = dist.all_gather_variable(torch.cat(labels))
    idx = dist.all_gather_variable(torch.cat(idx))
    order = torch.argsort(idx)
    return feats[order], labels[order]


@torch.no_grad()
def knn_scores(train_feats, train_labels, test_feats, num_classes, k=200, temperature=0.07, chunk=512):
    """Class scores [N_test, num_classes] of the weighted kNN vote."""
    train_feats = F.normalize(train_feats, dim=1)
    test_feats = F.normalize(test_feats, dim=1)
    k = min(k, train_feats.shape[0])
    out = []
    for i in range(0, test_feats.shape[0], chunk):
        sim = test_feats[i:i + chunk] @ train_feats.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        out.append(votes)
    return torch.cat(out)


def topk_accuracy(scores, labels, ks=(1,)):
    """Percent of samples whose label is among the top-k scores, for each k."""
    top = scores.topk(max(ks), dim=1).indices
    hit = top == labels[:, None]
    return [hit[:, :k].any(1).float().mean().item() * 100 for k in ks]


def knn_top1(backbone, train_loader, val_loader, augment, device, num_classes, k, temperature,
             channels_last=False, amp_dtype=None):
    tr_f, tr_y = extract_features(backbone, train_loader, augment, device, channels_last, amp_dtype)
    va_f, va_y = extract_features(backbone, val_loader, augment, device, channels_last, amp_dtype)
    scores = knn_scores(tr_f, tr_y, va_f, num_classes, k, temperature)
    return topk_accuracy(scores, va_y)[0]

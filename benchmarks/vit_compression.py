#!/usr/bin/env python
"""Does sequence compression buy the speed-up the cost model promises? (NeurIPS'24 sec. 4.4)

1. Step time (forward + backward of the ViT encoder alone) against sequence length: the cost
   model assumes time linear in L; the paper says the quadratic attention term starts to matter
   above about 400 tokens (ViT-B). Printed: time per token relative to the shortest sequence.
2. For each strategy of Table 2 (token dropout asymmetric / symmetric, symmetric patch scaling,
   query patch with another key patch), one MoCo v3 training step (both views, momentum key
   encoder, optimizer step), side by side in one run: wall-time speed-up over the full-sequence
   step, measured FLOP speed-up (torch.utils.flop_counter), and Table 1's cost-model speed-up.

    python benchmarks/vit_compression.py                       # CPU: ViT-Tiny, patch 8 at 48 px
    python benchmarks/vit_compression.py --arch vit_b16 --patch 16 --size 240 --batch 64   # GPU scale
"""
import argparse
import os
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import selfsup  # noqa: E402
from accel import cost, token_dropout  # noqa: E402
from common.config import _to_config  # noqa: E402
from common.flops import _cpu_attention_flops  # noqa: E402
from models.vit import ViT  # noqa: E402


def timed(fn, reps, sync):
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops(fn):
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as c:
        fn()
    return c.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_t16")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lengths", default="16,36,64,100,144,196,256,400,576")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    print(f"device {device}, {torch.get_num_threads()} thread(s), {args.arch}, batch {args.batch}")

    # ---- 1. step time against sequence length
    vit = ViT(args.arch, args.patch).to(device)
    rows = []
    for L in [int(x) for x in args.lengths.split(",")]:
        x = torch.randn(args.batch, L, vit.num_features, device=device)

        def step():
            vit.zero_grad(set_to_none=True)
            vit.encode(x).sum().backward()
        rows.append((L, timed(step, args.reps, sync), flops(step)))
    t0 = rows[0][1] / (rows[0][0] + 1)
    f0 = rows[0][2] / (rows[0][0] + 1)
    print("\n1. encoder forward + backward against sequence length (L patch tokens + class token)")
    print(f"{'L':>6} {'ms/step':>9} {'time/token (rel.)':>18} {'FLOPs/token (rel.)':>19}")
    for L, t, f in rows:
        print(f"{L:>6} {1e3 * t:>9.1f} {t / (L + 1) / t0:>18.2f} {f / (L + 1) / f0:>19.2f}")

    # ---- 2. Table 2 strategies, one MoCo v3 step each
    cfg = _to_config(selfsup.method_defaults())
    cfg.name = "mocov3"
    cfg.mocov3.update(proj_hidden=256, proj_dim=64, proj_layers=3, pred_hidden=256, temperature=0.2)
    method = selfsup.build_method(cfg, ViT(args.arch, args.patch)).to(device).train()
    method.prepare(10, 10)
    opt = torch.optim.AdamW([q for q in method.parameters() if q.requires_grad], lr=1e-4)
    views = [torch.randn(args.batch, 3, args.size, args.size, device=device) for _ in range(2)]
    p0, s = args.patch, args.size
    sizes = [q for q in (p0, p0 * 3 // 2, p0 * 2, p0 * 3, p0 * 4, p0 * 5 // 2) if s % q == 0 and q <= s // 2]
    sizes = sorted(set(sizes))
    strategies = [("none", 0.0, p0, 0.0, p0)]
    strategies += [(f"2a asym d={d}", d, p0, 0.0, p0) for d in (0.25, 0.5, 0.75, 0.9)]
    strategies += [(f"2a sym d={d}", d, p0, d, p0) for d in (0.5, 0.75)]
    strategies += [(f"2b sym q={q}", 0.0, q, 0.0, q) for q in sizes[1:]]
    q_big = sizes[-2] if len(sizes) > 2 else sizes[-1]
    strategies += [(f"2c q={q_big} k={k}", 0.0, q_big, 0.0, k) for k in sizes if k < q_big]
    L_full = 1 + cost.sequence_length(s, p0)

    def step_of(st, gen_seed=0):
        _, d_q, p_q, d_k, p_k = st

        def step():
            gen = torch.Generator().manual_seed(gen_seed)
            setting = token_dropout.QueryKey(token_dropout.SeqCompression(d_q, p_q, gen),
                                             token_dropout.SeqCompression(d_k, p_k, gen))
            loss = method(views, compression=setting)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.on_step(0)
        return step

    results = []
    for st in strategies:
        step = step_of(st)
        _, d_q, p_q, d_k, p_k = st
        c = cost.vit_sample_cost("mocov3", 1 + cost.sequence_length(s, p_q, d_q), 1 + cost.sequence_length(s, p_k, d_k),
                                 L_base=L_full)
        results.append((st[0], 1 + cost.sequence_length(s, p_q, d_q), 1 + cost.sequence_length(s, p_k, d_k),
                        timed(step, args.reps, sync), flops(step), c))
    base_t, base_f, base_c = results[0][3], results[0][4], results[0][5]
    print(f"\n2. MoCo v3 training step per strategy ({args.size} px, model patch {p0}, L_base = {L_full:g})")
    print(f"{'strategy':<16} {'L_q':>6} {'L_k':>6} {'ms/step':>8} {'wall x':>7} {'FLOP x':>7} {'cost-model x':>13}")
    for name, lq, lk, t, f, c in results:
        print(f"{name:<16} {lq:>6.1f} {lk:>6.1f} {1e3 * t:>8.1f} {base_t / t:>7.2f} {base_f / f:>7.2f} {base_c / c:>13.2f}")


if __name__ == "__main__":
    main()

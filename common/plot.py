"""Minimal PNG line plots with Pillow (already a torchvision dependency), so the project needs
no plotting library: LR-finder curves and similar diagnostics."""
import math

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ticks(lo, hi, log):
    if log:
        return [10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) if lo <= e <= hi]
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-12)))
    if (hi - lo) / step < 4:
        step /= 2
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def line_plot(path, series, title="", xlabel="", ylabel="", logx=False, vlines=(), size=(720, 440), markers=False):
    """series: {label: (xs, ys)}; vlines: [(x, label)]. Non-finite points are skipped. markers:
    a dot at every point (a series of one point always gets one)."""
    w, h = size
    left, right, top, bottom = 70, 20, 30, 50
    pts = {k: [(x, y) for x, y in zip(*v) if math.isfinite(y) and (x > 0 or not logx)] for k, v in series.items()}
    allp = [p for v in pts.values() for p in v]
    if not allp:
        raise ValueError("nothing finite to plot")
    fx = (lambda x: math.log10(x)) if logx else (lambda x: x)
    x0, x1 = min(fx(p[0]) for p in allp), max(fx(p[0]) for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
    if x1 == x0:
        x1 += 1
    if y1 == y0:
        y1 += 1
    sx = lambda x: left + (fx(x) - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    sy = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _ticks(x0, x1, logx):
        x = sx(t)
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 12, h - bottom + 6), f"{t:g}", fill="black")
    for t in _ticks(y0, y1, False):
        y = sy(t)
        d.line([left - 4, y, left, y], fill="black")
        d.text((5, y - 6), f"{t:.3g}", fill="black")
    for i, (label, p) in enumerate(pts.items()):
        c = COLOURS[i % len(COLOURS)]
        if len(p) > 1:
            d.line([(sx(x), sy(y)) for x, y in p], fill=c, width=2)
        if markers or len(p) == 1:
            for x, y in p:
                d.ellipse([sx(x) - 4, sy(y) - 4, sx(x) + 4, sy(y) + 4], fill=c)
        d.text((left + 10, top + 5 + 14 * i), label, fill=c)
    for x, label in vlines:
        if (x > 0 or not logx) and x0 <= fx(x) <= x1:
            d.line([sx(x), top, sx(x), h - bottom], fill=(120, 120, 120))
            d.text((sx(x) + 3, top + 2), label, fill=(80, 80, 80))
    d.text((left, 8), title, fill="black")
    d.text(((w - len(xlabel) * 6) / 2, h - 18), xlabel, fill="black")
    d.text((5, 8), ylabel, fill="black")
    img.save(path)


def _ramp(t):
    """Colour of t in [0, 1]: dark blue -> teal -> yellow (a viridis-like ramp)."""
    stops = [(0.0, (68, 1, 84)), (0.33, (49, 104, 142)), (0.66, (53, 183, 121)), (1.0, (253, 231, 37))]
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            u = (t - t0) / (t1 - t0)
            return tuple(int(a + (b - a) * u) for a, b in zip(c0, c1))
    return stops[-1][1]


def heatmap(path, panels, row_labels, col_labels, xlabel="", ylabel="", log=True, cell=(64, 30)):
    """panels: [(title, grid)] with grid[row][col] numbers; one heat-map per panel, side by side,
    each with its own colour scale (log10 of the values when `log`), the value printed in each
    cell and the smallest cell outlined. Used for NeurIPS'24 Fig. 4 (grad_error.py)."""
    cw, ch = cell
    left, top, gap = 50, 40, 30
    nr, nc = len(row_labels), len(col_labels)
    pw, ph = left + nc * cw, top + nr * ch + 30
    img = Image.new("RGB", (len(panels) * (pw + gap), ph + 20), "white")
    d = ImageDraw.Draw(img)
    for k, (title, grid) in enumerate(panels):
        ox = k * (pw + gap)
        vals = [v for row in grid for v in row if math.isfinite(v) and (v > 0 or not log)]
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        lo, hi = (min(map(f, vals)), max(map(f, vals))) if vals else (0.0, 1.0)
        best = min(((v, i, j) for i, row in enumerate(grid) for j, v in enumerate(row) if math.isfinite(v)),
                   default=None)
        d.text((ox + left, 8), title, fill="black")
        for i, row in enumerate(grid):
            d.text((ox + 5, top + i * ch + 8), str(row_labels[i]), fill="black")
            for j, v in enumerate(row):
                x0, y0 = ox + left + j * cw, top + i * ch
                ok = math.isfinite(v) and (v > 0 or not log)
                t = (f(v) - lo) / (hi - lo) if ok and hi > lo else 0.5
                colour = _ramp(t) if ok else (200, 200, 200)
                d.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=colour)
                d.text((x0 + 4, y0 + 8), f"{v:.3g}", fill="white" if t < 0.6 else "black")
                if best is not None and (i, j) == best[1:]:
                    d.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], outline="red", width=2)
        for j, lab in enumerate(col_labels):
            d.text((ox + left + j * cw + 18, top + nr * ch + 4), str(lab), fill="black")
        d.text((ox + left, top + nr * ch + 18), xlabel, fill="black")
        d.text((ox + 5, top - 14), ylabel, fill="black")
    img.save(path)

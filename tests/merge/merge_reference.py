"""Per-tensor reference merges, written the way mergekit 0.1.5 writes them: one tensor and one
model at a time, a full stable ``argsort`` for every magnitude selection, Python loops over
models and pairs. Deliberately naive; shares no code with ``nytorch_func.merge``.

Each ``ref_*`` takes plain tensors (``base`` and a list of model tensors) and Python numbers and
returns the merged tensor in float32/float64; ``merge_dicts`` applies one to every operational
parameter of particles and carries the rest as the library's rules say.
"""

from __future__ import annotations

import math

import torch


def _work(t):
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def ref_magnitude(delta, density):
    if density >= 1:
        return delta
    n = delta.numel()
    k = max(1, int(density * n))
    order = torch.argsort(delta.abs().reshape(-1), descending=True, stable=True)
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[:k]] = 1
    return delta * mask.reshape(delta.shape)


def ref_outliers(delta, density, gamma):
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    # mergekit keeps ascending positions [n_bot, n_bot + target); the library breaks ties by
    # a stable *descending* order, so take descending positions [n - n_bot - target, n - n_bot)
    order = torch.argsort(delta.abs().reshape(-1), descending=True, stable=True)
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[n - n_bot - target: n - n_bot]] = 1
    return delta * mask.reshape(delta.shape)


def ref_random(delta, density, rescale, generator=None):
    if density >= 1:
        return delta
    noise = torch.rand(delta.shape, generator=generator, dtype=torch.float32)
    masked = delta * (noise < density)
    if rescale is False:
        return masked
    if rescale == "inverse":
        return masked / density
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def ref_task(base, models, weights, *, sparsify=None, consensus=False, normalize=False,
             scale=1.0):
    b = _work(base)
    deltas = []
    for i, mt in enumerate(models):
        d = _work(mt) - b
        if sparsify is not None:
            d = sparsify(i, d)
        deltas.append(d * weights[i])
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=b.dtype).reshape(-1, *([1] * b.dim()))
    if consensus:
        majority = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(b.dtype)
        agree = (stacked.sign() == majority).to(b.dtype)
        mixed = (stacked * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(0)
        divisor = w.sum()
        if abs(float(divisor)) < 1e-8:
            divisor = torch.ones_like(divisor)
    if normalize:
        mixed = mixed / divisor
    return b + mixed * scale


def ref_linear(models, weights, normalize=True):
    out = sum(_work(m) * w for m, w in zip(models, weights))
    return out / sum(weights) if normalize else out


def ref_slerp(a, b, t):
    x, y = _work(a).reshape(-1), _work(b).reshape(-1)
    na, nb = float(x.norm()), float(y.norm())
    na, nb = (na if na > 1e-8 else 1.0), (nb if nb > 1e-8 else 1.0)
    dot = float(((x / na) * (y / nb)).sum())
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > 0.9995:
        out = (1 - t) * x + t * y
    else:
        theta = math.acos(dot)
        out = (math.sin((1 - t) * theta) * x + math.sin(t * theta) * y) / math.sin(theta)
    return out.reshape(a.shape)


def ref_stock(base, models, filter_wise=False):
    w0 = _work(base)
    ws = [_work(m) for m in models]
    if filter_wise and w0.dim() >= 2:
        rows = [ref_stock(w0[r], [w[r] for w in ws]) for r in range(w0.shape[0])]
        return torch.stack(rows)
    offsets = [w.reshape(-1) - w0.reshape(-1) for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            prod = max(float(offsets[i].norm() * offsets[j].norm()), 1e-6)
            cos.append(min(1.0, max(-1.0, float((offsets[i] * offsets[j]).sum()) / prod)))
    c = sum(cos) / len(cos)
    n = len(ws)
    den = 1 + (n - 1) * c
    t = 0.0 if abs(den) < 1e-6 else n * c / den
    return t * (sum(ws) / n) + (1 - t) * w0


def merge_dicts(base, models, merge_param, *, mean_buffers=None):
    """Expected ``{key: tensor}`` for a merge of particles: ``merge_param(key, base_t,
    [model_t...])`` for operational float params, the base's (model 0's) value for the rest,
    ``mean_buffers(key, ...)`` for floating "mean" buffers, the reset value for "reset"."""
    ref = base if base is not None else models[0]
    schema = ref.schema
    out = {}
    for spec in schema.leaf_specs:
        key = spec.key
        b = base[key] if base is not None else None
        ms = [m[key] for m in models]
        if spec.kind == "param" and spec.config.operational and spec.dtype.is_floating_point:
            out[key] = merge_param(key, b, ms).to(spec.dtype)
        elif spec.kind == "buffer" and spec.policy == "reset":
            out[key] = spec.reset.clone()
        elif (spec.kind == "buffer" and spec.policy == "mean" and spec.dtype.is_floating_point
              and mean_buffers is not None):
            out[key] = mean_buffers(key, b, ms).to(spec.dtype)
        else:
            out[key] = ref[key]
    return out

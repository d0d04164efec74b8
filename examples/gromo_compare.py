"""nf.widen side by side with GroMo 0.1.0 on the same growth of one model.

One MLP ``64 -> 16 -> 10`` (ReLU) is trained for 100 Adam steps on scikit-learn's digits, then its
hidden layer grows by 32 units, once with each method below, from the same weights and the same
Adam state. For each: whether the function is preserved (largest change of the test logits),
the time of the growth (median of ``--repeats``, each on a fresh copy; for ours the growth *and*
carrying the Adam state), and whether the optimizer state survives (how many of the model's
tensors still have their Adam moments afterwards, and whether the old coordinates' moments are
unchanged), then 20 more Adam steps to show what training continues from.

GroMo is a peer, never a dependency of nytorch_func: run this in a scratch virtualenv::

    python -m venv /tmp/gromo-venv
    /tmp/gromo-venv/bin/pip install torch==2.13.0          # first: the CPU wheel
    /tmp/gromo-venv/bin/pip install gromo==0.1.0 optree safetensors scikit-learn
    PYTHONPATH=. /tmp/gromo-venv/bin/python examples/gromo_compare.py

GroMo grows its own module classes (``LinearGrowingModule`` inside ``GrowingMLP``); its growth
replaces each grown ``nn.Linear`` by a new one (``layer_of_tensor``), so a ``torch.optim``
optimizer made before the growth holds the old parameter objects: their moments are orphaned and
the new parameters are not in it, so a new optimizer must be made (the moments restart at zero).
GroMo's own strength is *choosing* new neurons from loss statistics (TINY: ``init_computation``,
``compute_optimal_updates``, a line search on the scaling factor), which changes the function on
purpose to lower the loss; nytorch_func has no counterpart to that. The comparison here is the
mechanism both offer: adding units that keep the function.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils import _pytree as pytree

import nytorch_func as nf
from nytorch_func.optim import Adam, AdamState

HIDDEN, BY, LR = 16, 32, 1e-2


def load_digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=0, stratify=y))


def trained_gromo(x: torch.Tensor, y: torch.Tensor):
    """A GroMo GrowingMLP 64-16-10 and its torch.optim.Adam after 100 full-batch steps."""
    from gromo.containers.growing_mlp import GrowingMLP

    torch.manual_seed(0)
    model = GrowingMLP(64, 10, hidden_size=HIDDEN, number_hidden_layers=1,
                       activation=nn.ReLU())
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def like(p: nf.Particle, tensors: dict[str, torch.Tensor]) -> nf.Particle:
    """A particle of ``p``'s species and version holding ``tensors`` (a pytree unflatten)."""
    _, spec = pytree.tree_flatten(p)
    return pytree.tree_unflatten([tensors[k].detach().clone() for k in p.schema.leaf_keys], spec)


def as_particle(model, opt) -> tuple[nf.Particle, AdamState]:
    """The same weights as an ``nn.Sequential`` particle and the same Adam state as ours."""
    l0, l1 = model.layers[0].layer, model.layers[1].layer
    seq = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    with torch.no_grad():
        for dst, src in ((seq[0], l0), (seq[2], l1)):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    p = nf.from_module(seq).detach()
    names = {"0.weight": l0.weight, "0.bias": l0.bias, "2.weight": l1.weight, "2.bias": l1.bias}
    m = like(p, {k: opt.state[t]["exp_avg"] for k, t in names.items()})
    v = like(p, {k: opt.state[t]["exp_avg_sq"] for k, t in names.items()})
    ids = nf.param_ids(p)
    step = {ids[k]: int(opt.state[t]["step"]) for k, t in names.items()}
    return p, AdamState(step, m, v)


def gromo_grow(model, how: str) -> None:
    layer = model.layers[1]
    kwargs = {
        "zeros": dict(output_extension_init="kaiming", input_extension_init="zeros"),
        "pairing": dict(output_extension_init="kaiming", input_extension_init="kaiming",
                        neuron_pairing="vv_z_negz", noise_ratio=0.0),
        "pairing+noise": dict(output_extension_init="kaiming", input_extension_init="kaiming",
                              neuron_pairing="vv_z_negz"),
        "copy_uniform": dict(),
    }[how]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer.create_layer_extensions(extension_size=BY, **kwargs)
        layer.apply_change(extension_size=BY, scaling_factor=1.0)
        layer.delete_update(include_previous=True)


def median_time(make, run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        arg = make()
        start = time.perf_counter()
        run(arg)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x_tr, x_te, y_tr, y_te = load_digits()
    model, opt = trained_gromo(x_tr, y_tr)
    p, state = as_particle(model, opt)
    with torch.no_grad():
        before = model(x_te)
    assert torch.allclose(nf.apply(p, x_te), before, atol=1e-6)  # the same starting point
    loss = lambda q: nn.functional.cross_entropy(nf.apply(q, x_tr), y_tr)  # noqa: E731
    rows = []

    for method in ("net2net", "zeros"):
        def grow_timed(arg, method=method):
            q, _ = arg
            wide = nf.widen(q, "0", "2", BY, method=method,
                            generator=torch.Generator().manual_seed(0))
            return wide, nf.touch_tree(arg[1], fill="zeros")

        def make_with_state(method=method):
            q = nf.from_module(nf.to_module(p)).detach()
            return q, AdamState(state.step, like(q, dict(zip(q.schema.leaf_keys, state.m.leaves))),
                                like(q, dict(zip(q.schema.leaf_keys, state.v.leaves))))

        seconds = median_time(make_with_state, grow_timed, args.repeats)
        q, s = make_with_state()
        wide = nf.widen(q, "0", "2", BY, method=method, generator=torch.Generator().manual_seed(0))
        carried = nf.touch_tree(s, fill="zeros")
        change = float((nf.apply(wide, x_te) - before).abs().max())
        kept = all(torch.equal(carried.m[k][:HIDDEN], s.m[k]) and torch.equal(
            carried.v[k][:HIDDEN], s.v[k]) for k in ("0.weight", "0.bias")) and torch.equal(
            carried.m["2.weight"][:, :HIDDEN], s.m["2.weight"])
        survived = sum(1 for k in carried.m.params if carried.m[k].abs().sum() > 0)
        opt_ours = Adam(lr=LR)
        for _ in range(20):
            wide, carried = opt_ours.step(wide, nf.grad(loss)(wide), carried)
            wide = wide.detach()
        rows.append({"method": f"nf.widen(method={method!r}) + touch_tree", "change": change,
                     "seconds": seconds,
                     "state": f"{survived}/4 tensors keep their moments"
                              + (", old coordinates bit-identical" if kept else ""),
                     "loss_after_20": float(loss(wide))})

    # the control: our zeros growth with the moments dropped, as GroMo's growth forces
    q, _ = make_with_state()
    wide = nf.widen(q, "0", "2", BY, method="zeros", generator=torch.Generator().manual_seed(0))
    opt_ours, fresh_state = Adam(lr=LR), Adam(lr=LR).init(wide)
    for _ in range(20):
        wide, fresh_state = opt_ours.step(wide, nf.grad(loss)(wide), fresh_state)
        wide = wide.detach()
    rows.append({"method": "nf.widen(method='zeros'), Adam state reset (control)",
                 "change": 0.0, "seconds": float("nan"), "state": "reset on purpose",
                 "loss_after_20": float(loss(wide))})

    for how in ("zeros", "pairing", "pairing+noise", "copy_uniform"):
        def make_gromo():
            return copy.deepcopy(model)

        seconds = median_time(make_gromo, lambda mdl, how=how: gromo_grow(mdl, how), args.repeats)
        g = copy.deepcopy(model)
        g_opt = torch.optim.Adam(g.parameters(), lr=LR)
        g_opt.load_state_dict(opt.state_dict())  # the same optimizer state as ours, before growth
        gromo_grow(g, how)
        with torch.no_grad():
            change = float((g(x_te) - before).abs().max())
        in_opt = {id(t) for group in g_opt.param_groups for t in group["params"]}
        live = list(g.parameters())
        kept = sum(1 for t in live if t in g_opt.state)
        tracked = sum(1 for t in live if id(t) in in_opt)
        fresh = torch.optim.Adam(g.parameters(), lr=LR)  # the only way on: moments restart at 0
        for _ in range(20):
            fresh.zero_grad()
            nn.functional.cross_entropy(g(x_tr), y_tr).backward()
            fresh.step()
        with torch.no_grad():
            after = float(nn.functional.cross_entropy(g(x_tr), y_tr))
        rows.append({"method": f"GroMo create_layer_extensions({how}) + apply_change",
                     "change": change, "seconds": seconds,
                     "state": f"{kept}/{len(live)} tensors keep their moments; {tracked}/"
                              f"{len(live)} still in the optimizer",
                     "loss_after_20": after})

    print(f"MLP 64-{HIDDEN}-10 on digits, 100 Adam steps, hidden layer grown by {BY}; "
          f"torch {torch.__version__}, 1 thread, median of {args.repeats}")
    print(f"loss before growing: {float(loss(p)):.4f}")
    for r in rows:
        print(f"- {r['method']}: max logit change {r['change']:.1e}; "
              f"{r['seconds'] * 1e3:.2f} ms; optimizer state: {r['state']}; "
              f"loss after 20 more Adam steps {r['loss_after_20']:.4f}")
    return rows


if __name__ == "__main__":
    main()

"""One SNES generation (ask + evaluate + tell): nytorch_func.evolution vs evotorch's SNES.

Same network (MLP 64-32-10), same population (64), same data and fitness (negative mean
cross-entropy on 512 samples of scikit-learn's digits), same SNES settings (initial sigma 0.1,
center learning rate 1.0, SNES's default sigma learning rate, NES rank utilities), one thread.
Timed interleaved A B A B after warm-up; medians are reported.

evotorch is not a dependency of nytorch_func; run this in a separate environment:

    python3 -m venv /tmp/vevo && /tmp/vevo/bin/pip install torch==2.13.0
    /tmp/vevo/bin/pip install evotorch optree safetensors scikit-learn
    PYTHONPATH=. /tmp/vevo/bin/python examples/evotorch_compare.py
"""

import logging
import os
import platform
import statistics
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import nytorch_func as nf
from nytorch_func import evolution as ev

torch.set_num_threads(1)

import evotorch  # noqa: E402  (after the thread setting)
from evotorch import Problem  # noqa: E402
from evotorch.algorithms import SNES  # noqa: E402

logging.getLogger("evotorch").setLevel(logging.WARNING)  # its INFO lines about the Problem

POP, SAMPLES, SIGMA, WARMUP, PAIRS = 64, 512, 0.1, 5, int(os.environ.get("PAIRS", 21))

# --- data and network, shared --------------------------------------------------------------
digits = load_digits()
x = torch.tensor(digits.data[:SAMPLES], dtype=torch.float32) / 16
y = torch.tensor(digits.target[:SAMPLES])
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
center = nf.from_module(net).detach()
yy = y.expand(POP, -1)


def neg_ce(logits):  # (POP, SAMPLES, 10) -> (POP,), higher is better
    return -nn.functional.cross_entropy(logits.transpose(1, 2), yy, reduction="none").mean(1)


spent = {"ours": 0.0, "evotorch": 0.0}  # seconds inside the fitness function

# --- ours: particles, fitness by vmap(nf.apply) -----------------------------------------------
batched_apply = torch.func.vmap(nf.apply, in_dims=(0, None))


def ours_fitness(pop):
    t = time.perf_counter()
    f = neg_ce(batched_apply(pop, x))
    spent["ours"] += time.perf_counter() - t
    return f


g = torch.Generator().manual_seed(0)
ours_state = [ev.snes_init(center, POP, sigma=SIGMA, lr_mean=1.0)]


def ours_generation():
    ours_state[0] = ev.snes_step(ours_state[0], ours_fitness, generator=g)


# --- evotorch: plain vectorised Problem over flat vectors, no ray actors ---------------------
shapes = [t.shape for t in net.parameters()]  # 0.weight, 0.bias, 2.weight, 2.bias
sizes = [s.numel() for s in shapes]
flat_center = torch.cat([t.detach().reshape(-1) for t in net.parameters()])


def flat_logits(sol):  # (POP, d) -> (POP, SAMPLES, 10), batched matmuls on views of the rows
    n = sol.shape[0]
    w1, b1, w2, b2 = (c.reshape(n, *s) for c, s in zip(sol.split(sizes, dim=1), shapes))
    h = torch.relu(torch.baddbmm(b1.unsqueeze(1), x.expand(n, -1, -1), w1.transpose(1, 2)))
    return torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2))


def evo_fitness(sol):
    t = time.perf_counter()
    f = neg_ce(flat_logits(sol))
    spent["evotorch"] += time.perf_counter() - t
    return f


problem = Problem("max", evo_fitness, solution_length=flat_center.numel(), vectorized=True,
                  initial_bounds=(-0.1, 0.1), num_actors=None, dtype=torch.float32)
searcher = SNES(problem, popsize=POP, stdev_init=SIGMA, center_init=flat_center,
                center_learning_rate=1.0)  # stdev_learning_rate: SNES default, as ours

# the two fitness functions agree on the same parameters
with torch.no_grad():
    probe = nf.population(center, POP, init="randn", generator=torch.Generator().manual_seed(1))
    flat_probe = torch.cat([t.reshape(POP, -1) for t in probe.params.values()], 1)
    assert torch.allclose(neg_ce(batched_apply(probe, x)), neg_ce(flat_logits(flat_probe)),
                          atol=1e-5)


def evo_generation():
    searcher.step()


# --- timing ----------------------------------------------------------------------------------
cases = {"ours": ours_generation, "evotorch": evo_generation}
for _ in range(WARMUP):
    for fn in cases.values():
        fn()
times = {k: [] for k in cases}
evals = {k: [] for k in cases}
for _ in range(PAIRS):
    for k, fn in cases.items():  # A B A B ...
        before = spent[k]
        t = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t)
        evals[k].append(spent[k] - before)

med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
med_eval = {k: statistics.median(v) * 1e3 for k, v in evals.items()}

# where the fitness gap comes from: the logits alone, same members, three ways
skeleton = center.schema.skeleton
raw_params = dict(probe.params)
logit_fns = {
    "vmap(nf.apply)": lambda: batched_apply(probe, x),
    "vmap(functional_call) on raw dicts": lambda: torch.func.vmap(
        lambda p: torch.func.functional_call(skeleton, p, (x,)))(raw_params),
    "flat baddbmm (evotorch side)": lambda: flat_logits(flat_probe),
}
fit_times = {k: [] for k in logit_fns}
with torch.no_grad():
    for _ in range(WARMUP):
        for fn in logit_fns.values():
            fn()
    for _ in range(PAIRS):
        for k, fn in logit_fns.items():
            t = time.perf_counter()
            fn()
            fit_times[k].append(time.perf_counter() - t)
fit_alone = {k: statistics.median(v) * 1e3 for k, v in fit_times.items()}

with torch.no_grad():
    ours_center_f = float(-nn.functional.cross_entropy(nf.apply(ours_state[0].mean, x), y))
    evo_center = searcher.status["center"]
    evo_center_f = float(-nn.functional.cross_entropy(flat_logits(evo_center[None])[0], y))
start_f = float(-nn.functional.cross_entropy(net(x), y).detach())
gens = WARMUP + PAIRS

print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
      f"({torch.get_num_threads()} thread), evotorch {evotorch.__version__}, "
      f"python {platform.python_version()}")
print(f"SNES generation, MLP 64-32-10 ({flat_center.numel()} params), popsize {POP}, fitness "
      f"-CE on {SAMPLES} digits; median of {PAIRS} interleaved pairs after {WARMUP} warm-up")
print()
print(f"| {'side':<22} | {'ms / generation':>15} | {'of which fitness':>16} | {'rest':>8} |")
print(f"|{'-' * 24}|{'-' * 17}|{'-' * 18}|{'-' * 10}|")
for k, label in (("ours", "nytorch_func SNES"), ("evotorch", "evotorch SNES")):
    print(f"| {label:<22} | {med[k]:>15.2f} | {med_eval[k]:>16.2f} | "
          f"{med[k] - med_eval[k]:>8.2f} |")
print()
print(f"ratio ours / evotorch: {med['ours'] / med['evotorch']:.2f}x per generation, "
      f"{(med['ours'] - med_eval['ours']) / (med['evotorch'] - med_eval['evotorch']):.2f}x "
      f"outside the fitness")
print(f"logits alone, one population (median of {PAIRS} interleaved rounds): "
      + ", ".join(f"{k} {v:.2f} ms" for k, v in fit_alone.items()))
print(f"sanity: centre fitness {start_f:.3f} at start -> ours {ours_center_f:.3f}, "
      f"evotorch {evo_center_f:.3f} after {gens} generations")

"""The merge benchmark rows: their baselines compute the same merge as nytorch_func.merge (so
the ratios compare like with like), and the rows build and run. Structure only, no timings."""

import torch

import nytorch_func as nf
from nytorch_func import merge
from nytorch_func.bench import measure
from nytorch_func.bench._cases import BUILDERS, GROUPS
from nytorch_func.bench._merge_cases import (_as_dict, _family, kthvalue_ties,
                                             mergekit_style_ties, search_row)


def test_baselines_compute_the_same_ties():
    base, models = _family((12, 9, 3), 4, seed=3)
    w = torch.tensor([0.5, 1.5, 1.0, 0.25])
    ours = merge.ties(base, models, w, density=0.4)
    fast = kthvalue_ties(_as_dict(base), _as_dict(models), w, 0.4)
    slow = mergekit_style_ties(_as_dict(base), [_as_dict(m) for m in nf.unstack(models)],
                               w.tolist(), [0.4] * 4)
    for key, t in _as_dict(ours).items():
        torch.testing.assert_close(t, fast[key])
        torch.testing.assert_close(t, slow[key])


def test_merge_group_is_registered_and_the_search_row_runs():
    assert "merge" in GROUPS and "merge" in BUILDERS
    row = measure(search_row(), repeats=1, min_time=1e-4)
    assert row["id"] == "merge-search" and row["target"] == ">= 20x faster"
    assert row["ours_s"] > 0 and row["base_s"] > 0

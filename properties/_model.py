"""Shared helpers of the property suite. The reference model of what a particle should hold is
the testing package's own :class:`nytorch_func.testing.Reference` (a plain dict of tensors)."""

from __future__ import annotations

import nytorch_func as nf
import nytorch_func.testing as nft
from nytorch_func.testing._reference import OPS, UNARY

Model = nft.Reference

__all__ = ["Model", "OPS", "UNARY", "apply_chain"]


def apply_chain(p: nf.Particle, chain: list[nft.Edit]) -> tuple[nf.Particle, list[nf.Particle]]:
    """``p`` after every edit of ``chain``, and the initiator after each step (keeps versions
    alive)."""
    steps = []
    for edit in chain:
        p = edit.apply(p)
        steps.append(p)
    return p, steps

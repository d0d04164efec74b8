"""Bench rows of ``nf.save`` + ``nf.load`` against raw safetensors (group ``io``).

Two rows, each comparing like with like:

- ``io``: ``nf.save(..., sync=False)`` + ``nf.load`` against ``safetensors.torch.save_file`` +
  ``load_file``: neither side fsyncs, so the ratio is the cost of what a checkpoint carries
  beyond the raw tensors (history JSON, checksums, the atomic rename, rebuilding the species).
  Target: at most 2.0x.
- ``io-sync``: the default ``nf.save`` (fsync of the file and its directory) against
  ``save_file`` followed by the same fsyncs: the durable save, for reference. On a busy disk the
  fsyncs dominate both sides.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

import nytorch_func as nf

from ._harness import Case, Side, Target

__all__ = ["io_rows"]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def io_rows() -> tuple[list[Case], dict[str, str]]:
    from safetensors.torch import load_file, save_file

    from ._cases import POP_SIZES, mlp

    folder = tempfile.mkdtemp(prefix="nf-bench-")
    atexit.register(shutil.rmtree, folder, True)
    models = [mlp(POP_SIZES) for _ in range(64)]
    pop = nf.from_modules(models).detach()
    classes = [type(models[0])]  # a class made at run time: nf.load never imports code itself
    tensors = {k: t.contiguous() for k, t in zip(pop.schema.leaf_keys, pop.leaves)}

    def ours(sync: bool) -> Callable[[], Callable[[], Any]]:
        def setup() -> Callable[[], Any]:
            path = os.path.join(folder, f"ours-{sync}.safetensors")

            def run() -> Any:
                nf.save(path, pop, sync=sync)
                return nf.load(path, classes=classes)

            return run

        return setup

    def raw(sync: bool) -> Callable[[], Callable[[], Any]]:
        def setup() -> Callable[[], Any]:
            path = os.path.join(folder, f"raw-{sync}.safetensors")

            def run() -> dict[str, torch.Tensor]:
                save_file(tensors, path)
                if sync:
                    _fsync(path)
                    _fsync(folder)
                return load_file(path)

            return run

        return setup

    return [
        Case("io", "io", "save + load a 64-stack (MLP 64-32-10), no fsync",
             Side("nf.save(sync=False) + nf.load", ours(False)),
             Side("safetensors save_file + load_file", raw(False)), Target("max_ratio", 2.0)),
        Case("io-sync", "io", "save + load a 64-stack (MLP 64-32-10), fsynced",
             Side("nf.save + nf.load", ours(True)),
             Side("save_file + fsync + load_file", raw(True))),
    ], {}

"""The safetensors container, written atomically and read without extra copies.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor its
dtype code, shape and byte range; string metadata under ``"__metadata__"``), then the tensor
bytes. The format is small enough to stream directly: :func:`write` sends each tensor's own
memory to the file (no serialised copy of the whole checkpoint in memory, which
``safetensors.torch.save`` builds), and :func:`read` reads each tensor's bytes straight into a
tensor of its own (no intermediate buffer, each tensor owns its writable storage). The files
are standard: ``safetensors.safe_open`` reads them, and :func:`read` reads what the safetensors
library writes; the tests hold both to that.

Writes go to a temporary file in the target's directory, are fsynced, and replace the target in
one ``os.replace`` (then the directory is fsynced): a crash or a full disk mid-save leaves the
previous file whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import numpy as np
import torch

from ._errors import CheckpointError

__all__ = ["CODES", "write", "read", "atomic_write", "byte_view"]

# safetensors dtype codes; a dtype missing here is stored by the caller as raw bytes (U8)
CODES: dict[torch.dtype, str] = {
    dtype: code for code, dtype in (
        ("F64", torch.float64), ("F32", torch.float32), ("F16", torch.float16),
        ("BF16", torch.bfloat16), ("I64", torch.int64), ("I32", torch.int32),
        ("I16", torch.int16), ("I8", torch.int8), ("U8", torch.uint8), ("BOOL", torch.bool),
        ("C64", torch.complex64), ("U64", getattr(torch, "uint64", None)),
        ("U32", getattr(torch, "uint32", None)), ("U16", getattr(torch, "uint16", None)),
        ("F8_E4M3", getattr(torch, "float8_e4m3fn", None)),
        ("F8_E5M2", getattr(torch, "float8_e5m2", None)),
        ("F8_E4M3FNUZ", getattr(torch, "float8_e4m3fnuz", None)),
        ("F8_E5M2FNUZ", getattr(torch, "float8_e5m2fnuz", None)))
    if dtype is not None}
_DTYPES = {code: dtype for dtype, code in CODES.items()}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def byte_view(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor as a uint8 array sharing its memory (no copy).

    A tensor of at most one element can count as contiguous with stride 0 (expanded); it is
    copied. So is a lazy conjugate or negative view (``t.conj()`` of a complex tensor,
    ``t.conj().imag``): its memory holds the values before the conjugation or negation, so
    its bytes are those of the resolved values.

    >>> import torch
    >>> z = torch.tensor([1 + 2j], dtype=torch.complex64).conj()
    >>> torch.frombuffer(bytearray(byte_view(z)), dtype=torch.complex64)
    tensor([1.-2.j])
    """
    t = t.detach().resolve_conj().resolve_neg()  # the tensor itself when no bit is set
    if t.dtype in _NUMPY:  # numpy's own view: fewer torch calls
        arr = t.numpy().reshape(-1)
        if arr.strides != (arr.itemsize,) and arr.size:
            arr = arr.copy()
        return arr.view(np.uint8)
    flat = t.reshape(-1)
    if flat.stride(0) != 1:
        flat = flat.clone(memory_format=torch.contiguous_format)
    return flat.view(torch.uint8).numpy()


_NUMPY = frozenset({torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
                    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
                    torch.complex128})


def _write_bytes(f: BinaryIO, data: Any) -> None:
    """The one place bytes reach the disk (tests make it fail midway)."""
    f.write(data)


def atomic_write(path: str, chunks: Iterable[Any], *, sync: bool = True) -> None:
    """Write ``chunks`` (bytes-like) to ``path`` via a temp file and ``os.replace``.

    ``sync``: fsync the file before the rename and the directory after it, so the new file
    survives a power loss or an OS crash too (not only a crash of this process).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                _write_bytes(f, chunk)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not sync:
        return
    with contextlib.suppress(OSError, AttributeError):  # make the rename durable (POSIX)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], *,
          sync: bool = True, views: Mapping[str, np.ndarray] | None = None) -> None:
    """Write contiguous CPU ``tensors`` (dtypes in :data:`CODES`) and ``metadata`` atomically
    (:func:`atomic_write`). ``views``: their :func:`byte_view` s, if the caller has them.

    Tensors are laid out by decreasing element size, so each one starts at a multiple of its
    element size (the header is padded to 8 bytes, as the safetensors library does).
    """
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable: keeps order
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    chunks = []
    offset = 0
    for name in order:
        t = tensors[name]
        view = byte_view(t) if views is None else views[name]
        header[name] = {"dtype": CODES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + view.nbytes]}
        offset += view.nbytes
        if view.nbytes:
            chunks.append(view)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    atomic_write(path, [len(text).to_bytes(8, "little") + text, *chunks], sync=sync)


def _bad(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"load: {path!r} is not a readable safetensors file (truncated or "
                           f"corrupted?): {why}")


def read(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The metadata, tensors and their byte views of the safetensors file at ``path``.

    Every check the safetensors library makes is made (header size and JSON, dtype codes,
    shapes matching byte ranges, ranges covering the data exactly); a file that fails one
    raises :class:`CheckpointError`. A missing file raises the usual ``OSError``.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, f"{size} bytes, shorter than a header")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise _bad(path, f"the header says {n} bytes, the file has {size - 8} after it")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise _bad(path, f"the header is not JSON ({err})") from None
        if not isinstance(header, dict):
            raise _bad(path, "the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
            raise _bad(path, "the metadata is not a map of strings")
        layout = sorted((_entry(path, name, e) for name, e in header.items()),
                        key=lambda x: x[3])
        end = 0
        for name, dtype, shape, begin, stop in layout:
            if begin != end:
                raise _bad(path, f"tensor {name!r} starts at byte {begin}, expected {end}")
            end = stop
        if 8 + n + end != size:
            raise _bad(path, f"the tensors need {8 + n + end} bytes, the file has {size}")
        tensors, views = {}, {}
        for name, dtype, shape, begin, stop in layout:
            t = torch.empty(shape, dtype=dtype)
            view = views[name] = byte_view(t)
            if stop > begin and f.readinto(view) != stop - begin:
                raise _bad(path, f"tensor {name!r} is cut short")
            tensors[name] = t
    return metadata, tensors, views


def _entry(path: str, name: str, e: Any) -> tuple[str, torch.dtype, list[int], int, int]:
    ok = isinstance(e, dict) and e.get("dtype") in _DTYPES and isinstance(e.get("shape"), list)
    if ok:
        shape, offsets = e["shape"], e.get("data_offsets")
        ok = (all(type(d) is int and d >= 0 for d in shape) and isinstance(offsets, list)
              and len(offsets) == 2 and all(type(o) is int for o in offsets)
              and 0 <= offsets[0] <= offsets[1])
    if not ok:
        raise _bad(path, f"bad header entry for tensor {name!r:.60}")
    dtype = _DTYPES[e["dtype"]]
    numel = 1
    for d in shape:
        numel *= d
    begin, stop = offsets
    if numel * dtype.itemsize != stop - begin:
        raise _bad(path, f"tensor {name!r} has shape {shape} but {stop - begin} bytes")
    return name, dtype, shape, begin, stop

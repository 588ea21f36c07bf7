"""Compact model artifact: sparse int8/fp32 weights in one safetensors file, nothing pickled.

Why hand-written: safetensors stores dense tensors only, and torch's sparse layouts
(COO/CSR) keep int64/int32 indices (4-8 bytes per non-zero), more than the dense weights
they replace at the sparsities pruning reaches. So each weight is stored in the
smallest of four layouts, chosen per tensor by its byte count:

- "dense":   the tensor as is;
- "bitmask": one bit per element (numpy.packbits) + the non-zero values;
- "delta":   Deep Compression's relative index (Han et al. 2016, sec. 3): one uint8 gap
             per non-zero + its value; gaps over 255 insert a zero-valued filler entry;
- "codebook": a float tensor holding at most 256 distinct values, each used more than once
             (weight sharing, dlopt.stages.sharing): the distinct values + a uint8 index per
             non-zero and, with zeros, the "delta" gaps, both streams entropy-coded
             (`_entropy`). Lossless: decoding gives the very same floats.

An int8-quantized weight (a torchao `Int8Tensor`) is stored as its int8 `qdata` (sparse as
above) plus per-row `scale` and, for static quantization, the activation scale. The
layout of every entry lives in the safetensors header metadata, so the file alone is
enough to decode the tensors; the spec JSON beside it rebuilds the architecture.
"""
from __future__ import annotations

import json
import lzma
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

FORMAT = "compact-v1"
WEIGHTS = "model.safetensors"
_MAX_GAP = 255  # uint8 relative index


# ------------------------------------------------------------------ one tensor
def _delta_gaps(flat_nonzero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of non-zeros -> (uint8 gaps, index into the values per entry or -1 for fillers)."""
    gaps = np.diff(np.concatenate([[-1], flat_nonzero]))  # each >= 1
    fillers = (gaps - 1) // _MAX_GAP
    counts = fillers + 1
    out = np.full(int(counts.sum()), _MAX_GAP, dtype=np.int64)
    last = np.cumsum(counts) - 1
    out[last] = gaps - _MAX_GAP * fillers
    which = np.full(len(out), -1, dtype=np.int64)
    which[last] = np.arange(len(flat_nonzero))
    return out.astype(np.uint8), which


# Entropy coders for codebook indices, from the standard library (no dependency the pyfunc's
# environment would have to pin; no Huffman coder is installed here): DEFLATE (zlib) is LZ77 +
# Huffman coding, LZMA is LZ77 + range (arithmetic) coding. The smaller one is kept per
# stream. Measured on LeNet-300-100's first layer pruned to 8% and shared at 5 bits: the
# gap + code streams take 17.8 KB with LZMA against 16.6 KB for an ideal per-stream Huffman
# code without its tables (Deep Compression's coder), and 20.3 KB as one joint index stream.
_CODECS = {"zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
           "lzma": (lambda b: lzma.compress(b, format=lzma.FORMAT_RAW, filters=_LZMA),
                    lambda b: lzma.decompress(b, format=lzma.FORMAT_RAW, filters=_LZMA))}
_LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_CODEBOOK_MAX = 256  # distinct values: one uint8 index each


def _entropy(data: np.ndarray) -> tuple[str, torch.Tensor]:
    """(codec, coded bytes as a uint8 tensor): the smaller of the standard library's coders."""
    raw = data.astype(np.uint8).tobytes()
    codec, coded = min(((name, enc(raw)) for name, (enc, _) in _CODECS.items()),
                       key=lambda c: len(c[1]))
    return codec, torch.frombuffer(bytearray(coded), dtype=torch.uint8) if coded else \
        torch.zeros(0, dtype=torch.uint8)


def _codebook(name: str, t: torch.Tensor, flat: torch.Tensor
              ) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """(bytes, tensors, info) of the codebook layout, None when the tensor has too many
    distinct values (any trained weight that was not shared). As in Deep Compression, a
    tensor with zeros stores the non-zeros' positions as uint8 gaps (the "delta" layout's)
    and their codebook indices as two streams, each entropy-coded."""
    if not t.is_floating_point() or flat.numel() < _CODEBOOK_MAX:
        return None
    codebook, idx = torch.unique(flat, return_inverse=True)
    if len(codebook) > _CODEBOOK_MAX or 2 * len(codebook) > int((flat != 0).sum()):
        return None  # values that do not repeat are stored as they are
    idx = idx.numpy()
    info = {"shape": list(t.shape), "layout": "codebook"}
    tensors = {f"{name}::codebook": codebook}
    zero = (codebook == 0).nonzero()
    if len(zero):  # fillers of the gap stream carry the zero's index
        nz = np.nonzero(flat.numpy() != 0)[0]
        gaps, which = _delta_gaps(nz)
        idx = np.where(which >= 0, idx[nz[np.maximum(which, 0)]], int(zero[0]))
        info["gaps_codec"], tensors[f"{name}::gaps"] = _entropy(gaps)
    info["codec"], tensors[f"{name}::codes"] = _entropy(idx)
    nbytes = sum(v.numel() * v.element_size() for v in tensors.values())
    return nbytes, tensors, info


def encode(name: str, t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    """A tensor -> (tensors to store, layout info); the layout is the one with fewest bytes."""
    t = t.detach().cpu().contiguous()
    flat = t.reshape(-1)
    info = {"shape": list(t.shape)}  # dtype: the stored values' own
    item = t.element_size()
    nz = torch.nonzero(flat, as_tuple=True)[0].numpy()
    n = flat.numel()
    dense_cost = n * item
    bitmask_cost = (n + 7) // 8 + len(nz) * item
    gaps, which = _delta_gaps(nz) if n else (np.zeros(0, np.uint8), np.zeros(0, np.int64))
    delta_cost = len(gaps) * (1 + item)
    shared = _codebook(name, t, flat)
    if shared is not None and shared[0] < min(dense_cost, bitmask_cost, delta_cost):
        return shared[1], shared[2]
    best = min(dense_cost, bitmask_cost, delta_cost)
    if best == dense_cost or n == 0:
        return {name: t}, {"layout": "dense"}  # shape and dtype: the safetensors header's
    values = flat[torch.from_numpy(nz)]
    if best == bitmask_cost:
        mask = np.packbits((flat != 0).numpy().astype(np.uint8))
        return ({f"{name}::mask": torch.from_numpy(mask), f"{name}::values": values.clone()},
                {**info, "layout": "bitmask"})
    vals = torch.zeros(len(gaps), dtype=t.dtype)
    keep = torch.from_numpy(which >= 0)
    vals[keep] = values
    return ({f"{name}::gaps": torch.from_numpy(gaps), f"{name}::values": vals},
            {**info, "layout": "delta"})


def _unentropy(codec: str, coded: torch.Tensor) -> np.ndarray:
    return np.frombuffer(_CODECS[codec][1](coded.numpy().tobytes()), dtype=np.uint8)


def _decode_codebook(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    codebook = tensors[f"{name}::codebook"]
    values = codebook[torch.from_numpy(_unentropy(info["codec"],
                                                  tensors[f"{name}::codes"]).astype(np.int64))]
    if "gaps_codec" not in info:
        return values.reshape(info["shape"])
    gaps = _unentropy(info["gaps_codec"], tensors[f"{name}::gaps"])
    out = torch.zeros(int(np.prod(info["shape"])), dtype=codebook.dtype)
    out[torch.from_numpy(np.cumsum(gaps.astype(np.int64)) - 1)] = values  # fillers write 0
    return out.reshape(info["shape"])


def decode(name: str, info: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    layout = info["layout"]
    if layout == "dense":
        return tensors[name]
    if layout == "codebook":
        return _decode_codebook(name, info, tensors)
    values = tensors[f"{name}::values"]
    n = int(np.prod(info["shape"])) if info["shape"] else 1
    out = torch.zeros(n, dtype=values.dtype)
    if layout == "bitmask":
        bits = np.unpackbits(tensors[f"{name}::mask"].numpy(), count=n).astype(bool)
        out[torch.from_numpy(bits)] = values
    elif layout == "delta":
        pos = np.cumsum(tensors[f"{name}::gaps"].numpy().astype(np.int64)) - 1
        out[torch.from_numpy(pos)] = values  # fillers write zeros
    else:
        raise ValueError(f"unknown layout {layout!r} for {name}")
    return out.reshape(info["shape"])


# ------------------------------------------------------------------ a whole model
def _is_int8(t) -> bool:
    return hasattr(t, "qdata") and hasattr(t, "scale")


def pack(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """State dict -> stored tensors + per-entry layout. Masks from pruning must be removed first."""
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for key, value in model.state_dict().items():
        if key.endswith(("_mask", "_orig")):
            raise ValueError(f"{key}: make pruning permanent (prune.remove) before packing")
        if _is_int8(value):
            parts = {"qdata": value.qdata, "scale": value.scale}
            if getattr(value, "act_quant_scale", None) is not None:
                parts["act_scale"] = value.act_quant_scale
            zp = getattr(value, "zero_point", None)
            if zp is not None and bool((zp != 0).any()):  # symmetric: all zero, rebuilt on load
                parts["zero_point"] = zp
            entry = {"kind": "int8", "parts": {}}
            for part, t in parts.items():
                stored, info = encode(f"{key}.{part}", t) if part == "qdata" else \
                    ({f"{key}.{part}": t.detach().cpu().contiguous()}, {"layout": "dense"})
                tensors.update(stored)
                entry["parts"][part] = info
            entries[key] = entry
        else:
            stored, info = encode(key, value)
            tensors.update(stored)
            if info["layout"] != "dense":  # a plain dense tensor needs no entry
                entries[key] = {"kind": "plain", **info}
    return tensors, entries


def to_bytes(tensors: dict, entries: dict) -> bytes:
    header = json.dumps({"format": FORMAT, "entries": entries}, separators=(",", ":"))
    return save_bytes(tensors, metadata={"dlopt": header})


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict]:
    """File -> (float state dict with int8 weights dequantized, int8 parts by key, entries)."""
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["dlopt"])
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    state: dict[str, torch.Tensor] = {}
    int8: dict[str, dict[str, torch.Tensor]] = {}
    covered = set(header["entries"])
    covered |= {f"{k}.{p}" for k, e in header["entries"].items() for p in e.get("parts", ())}
    for key, t in stored.items():
        if "::" not in key and key not in covered:
            state[key] = t  # plain dense
    for key, entry in header["entries"].items():
        if entry["kind"] == "plain":
            state[key] = decode(key, entry, stored)
            continue
        parts = {p: decode(f"{key}.{p}", info, stored) for p, info in entry["parts"].items()}
        int8[key] = parts
        scale = parts["scale"].float()
        zp = parts.get("zero_point")
        q = parts["qdata"].float() - (zp.float() if zp is not None else 0.0)
        state[key] = q * scale.reshape(scale.shape + (1,) * (q.dim() - scale.dim()))
    return state, int8, header["entries"]


class CompactArtifact:
    """What a compression stage hands the loop at fit_end: `.save()` writes the artifact."""

    def __init__(self, model: torch.nn.Module, quantization: dict | None = None,
                 extra_meta: dict | None = None, files: dict[str, bytes] | None = None):
        self.tensors, self.entries = pack(model)
        self.quantization = quantization
        self.extra_meta = extra_meta or {}  # e.g. "widths" (structured removal), "onnx"
        self.files = files or {}  # other files saved beside the weights (the int8 ONNX model)

    def nbytes(self) -> int:
        """Exactly the size of the weights file `.save()` writes."""
        return len(to_bytes(self.tensors, self.entries))

    def save(self, directory: Path, spec_json: dict, meta: dict) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WEIGHTS).write_bytes(to_bytes(self.tensors, self.entries))
        for name, data in self.files.items():
            (directory / name).write_bytes(data)
        (directory / "spec.json").write_text(json.dumps(spec_json, indent=1))
        full = {**meta, **self.extra_meta, "format": FORMAT, "quantization": self.quantization}
        (directory / "meta.json").write_text(json.dumps(full, indent=1))
        return directory / WEIGHTS

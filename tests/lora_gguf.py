"""A tiny valid GGUF LoRA adapter for a GGUF base model, for tests: random low-rank updates on
the attention query and value projections of every block, written with the ``gguf`` package.

The layout follows llama.cpp's ``convert_lora_to_gguf.py`` (read, not copied): ``general.type =
adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, the base's architecture, and per
adapted weight ``<name>.lora_a`` ([rank, n_in] as a numpy array, GGUF's order reversed) and
``<name>.lora_b`` ([n_out, rank]), named after the base tensor."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TARGETS = ("attn_q", "attn_v")


def targets(base: str | Path) -> tuple[str, list[tuple[str, int, int]]]:
    """The base's architecture and ``(tensor name, n_in, n_out)`` of each weight to adapt
    (reading a base takes a while: do it once)."""
    import gguf

    reader = gguf.GGUFReader(str(base))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    shapes = []
    for t in reader.tensors:
        parts = t.name.split(".")  # blk.N.attn_q.weight
        if len(parts) == 4 and parts[2] in TARGETS:
            n_in, n_out = (int(x) for x in t.shape[:2])  # GGUF order: ne0 = inputs
            shapes.append((t.name, n_in, n_out))
    return arch, shapes


def write_lora(out: str | Path, arch: str, shapes: list[tuple[str, int, int]], seed: int, rank: int = 4,
               alpha: float = 4.0, scale: float = 0.05) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(out), arch=arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, n_in, n_out in shapes:
        writer.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, n_in)) * scale).astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", (rng.standard_normal((n_out, rank)) * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)

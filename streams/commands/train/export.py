"""A trained LoRA adapter out in the two formats the workers load.

* PEFT (``adapter_config.json`` + ``adapter_model.safetensors``): what vLLM's dynamic LoRA
  loading (``POST /v1/load_lora_adapter``) and transformers read.
* GGUF LoRA for llama.cpp (``llama_cpp.Llama(lora_path=…)``), written with the ``gguf``
  package as llama.cpp's own ``convert_lora_to_gguf.py`` lays it out: ``general.type=adapter``,
  ``general.architecture`` the base model's, ``adapter.type=lora``, ``adapter.lora.alpha``, and
  per target matrix ``<base tensor>.weight.lora_a`` (numpy ``(r, in)``, GGUF ne ``[in, r]``)
  and ``.lora_b`` (numpy ``(out, r)``). llama.cpp scales by ``alpha / r`` as PEFT does.

Both are written under a temporary name and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np

# Hugging Face module names (Llama/Gemma-style decoders) → llama.cpp tensor names
HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


class ExportError(ValueError):
    pass


def gguf_name(key: str) -> str:
    """``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`` → ``blk.3.attn_q.weight.lora_a``."""
    m = _KEY.search(key)
    if m is None or m.group(2) not in HF_TO_GGUF:
        raise ExportError(f"no llama.cpp tensor for LoRA weight {key!r}; target only "
                          f"{', '.join(sorted(HF_TO_GGUF))}")
    return f"blk.{m.group(1)}.{HF_TO_GGUF[m.group(2)]}.weight.lora_{m.group(3).lower()}"


def lora_tensors(state: dict) -> dict[str, np.ndarray]:
    """The PEFT adapter state dict (``get_peft_model_state_dict``) as GGUF tensors, f32."""
    out = {}
    for key, value in state.items():
        if "lora_" not in key:
            raise ExportError(f"{key}: only LoRA matrices can go into a GGUF LoRA (no modules_to_save)")
        out[gguf_name(key)] = value.detach().to("cpu").float().numpy()
    for name, a in out.items():
        if name.endswith(".lora_a"):
            b = out.get(name[:-1] + "b")
            if b is None or b.shape[1] != a.shape[0]:
                raise ExportError(f"{name}: lora_b missing or of another rank")
    return out


def write_gguf_lora(state: dict, path: str | os.PathLike, alpha: float, arch: str) -> str:
    """Writes ``path`` (atomically); returns its sha256."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, array in sorted(lora_tensors(state).items()):
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    digest = sha256(tmp)
    os.replace(tmp, path)
    return digest


def write_peft(model, directory: str | os.PathLike) -> str:
    """``model.save_pretrained`` into ``directory`` (replaced whole); returns the sha256 of
    ``adapter_model.safetensors``."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return sha256(directory / "adapter_model.safetensors")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

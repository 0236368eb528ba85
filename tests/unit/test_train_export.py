"""`prefstream train`'s pieces on a tiny random Gemma 3: the GGUF LoRA holds every LoRA matrix
under llama.cpp's tensor name with llama.cpp's shapes and the adapter metadata; the PEFT copy
loads back to the same weights; a DPO pass changes the adapter; the state file round-trips."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("peft")
gguf = pytest.importorskip("gguf")

from streams.commands.train import dpo, export  # noqa: E402
from streams.commands.train.state import State  # noqa: E402
from tests.tiny_gemma import tiny_gemma  # noqa: E402

ROWS = [{"prompt": [{"role": "user", "content": "what is one plus one"}],
         "chosen": [{"role": "assistant", "content": "two"}],
         "rejected": [{"role": "assistant", "content": "three"}]}] * 4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("tiny"))


def test_gguf_names(tmp_path):
    assert export.gguf_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight") == \
        "blk.3.attn_q.weight.lora_a"
    assert export.gguf_name("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight") == \
        "blk.12.ffn_down.weight.lora_b"
    with pytest.raises(export.ExportError, match="target only"):
        export.gguf_name("base_model.model.model.layers.0.self_attn.q_norm.lora_A.weight")


def test_trained_adapter_exports_in_both_formats(base_dir, tmp_path):
    import torch
    from peft import PeftModel, get_peft_model_state_dict

    base = dpo.load_base(str(base_dir))
    assert base.arch == "gemma3"
    hyper = dpo.Hyper(rank=4, alpha=8.0, lr=1e-2)
    model = dpo.with_adapter(base, hyper)
    stats = dpo.train(model, base.tokenizer, ROWS, hyper, tmp_path / "work")
    assert stats["steps"] == 2 and np.isfinite(stats["loss"])
    state = get_peft_model_state_dict(model)
    assert any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k), "lora_B still zero: nothing trained"

    sha = export.write_gguf_lora(state, tmp_path / "a.gguf", hyper.alpha, base.arch)
    assert sha == export.sha256(tmp_path / "a.gguf")
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    assert r.fields["general.type"].contents() == "adapter"
    assert r.fields["general.architecture"].contents() == "gemma3"
    assert r.fields["adapter.type"].contents() == "lora"
    assert r.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    tensors = {t.name: t for t in r.tensors}
    # 2 layers × q/k/v/o × (a, b); GGUF ne: lora_a [in, r], lora_b [r, out] (q: 2 heads × 16, k/v: 1 × 16)
    assert len(tensors) == 16
    out_dim = {"attn_q": 32, "attn_k": 16, "attn_v": 16, "attn_output": 32}
    in_dim = {"attn_q": 32, "attn_k": 32, "attn_v": 32, "attn_output": 32}
    for layer in (0, 1):
        for t, n_out in out_dim.items():
            a, b = tensors[f"blk.{layer}.{t}.weight.lora_a"], tensors[f"blk.{layer}.{t}.weight.lora_b"]
            assert [int(x) for x in a.shape] == [in_dim[t], 4] and [int(x) for x in b.shape] == [4, n_out]
            hf = state[f"base_model.model.model.layers.{layer}.self_attn.{ {'attn_q': 'q', 'attn_k': 'k', 'attn_v': 'v', 'attn_output': 'o'}[t]}_proj.lora_B.weight"]
            np.testing.assert_array_equal(np.asarray(b.data).reshape(hf.shape), hf.numpy())

    export.write_peft(model, tmp_path / "peft")
    again = PeftModel.from_pretrained(dpo.load_base(str(base_dir)).model, str(tmp_path / "peft"))
    for k, v in get_peft_model_state_dict(again).items():
        assert torch.equal(v, state[k]), k


def test_state_round_trip(tmp_path):
    s = State(offsets={0: 5, 1: 7}, trained=["a", "b"], round=2, adapter="x", pending=True, sha256="0" * 64)
    s.save(tmp_path)
    assert State.load(tmp_path) == s
    assert State.load(tmp_path / "none") == State()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_sft_weight_adds_the_chosen_sides_nll(base_dir, tmp_path):
    """RPO: with ``sft_weight`` the loss is DPO's plus the chosen side's NLL, which on a random
    model is near log(vocab) — far above DPO's own log 2 at the start."""
    losses = []
    for weight in (0.0, 1.0):
        base = dpo.load_base(str(base_dir))
        hyper = dpo.Hyper(lr=1e-6, rank=4, alpha=8.0, batch=2, max_length=64, sft_weight=weight)
        losses.append(dpo.train(dpo.with_adapter(base, hyper), base.tokenizer, ROWS, hyper, tmp_path / str(weight))["loss"])
    assert losses[0] == pytest.approx(np.log(2), abs=0.05)
    assert losses[1] - losses[0] > 0.5 * np.log(320)

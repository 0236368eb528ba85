"""The GGUF LoRA on the bundled Gemma 3 270M, end to end: the same adapter changes llama.cpp's
next-token logits the way it changes the PEFT model's in transformers, changes what llama.cpp
generates, and a real DPO step on the model exports an adapter llama.cpp loads.

Tolerance: transformers runs the GGUF's Q4_K weights dequantized to fp32, llama.cpp runs them
quantized (activations rounded to 8 bits for the dot products) and, once an adapter is loaded,
through another kernel (no repacked weights). So each side's change is taken against its own
baseline on its own code path: transformers with the adapter disabled, llama.cpp with a zero
adapter of the same shapes, and logits are compared up to a constant (softmax ignores a shift).
lora_B is random (std 0.02, scale alpha/r = 2): measured here, the change (norm 505 over the
262k logits) is 7× the disagreement of the two bases (72), the two changes' cosine 0.98 and
their norms within 6 % (std 0.01: norm 197, cosine 0.91 — the rounding then weighs more), and
both adapted models' ten likeliest next tokens are the same. The bounds (cosine > 0.9, norms
within 25 %, 7 of 10 tokens) leave room for other CPUs' kernels while an exporter that mapped
a tensor to the wrong layer or projection, transposed it, or scaled it by anything but
alpha/r is meant to fail them.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("gguf")

from streams.commands.train import dpo, export  # noqa: E402

pytestmark = pytest.mark.model

PROMPT = [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                                      "many clips in May. How many clips did Natalia sell in April and May?"}]


@pytest.fixture(scope="module")
def base():
    from agents.backends.llamacpp import bundled_model_path

    return dpo.load_base(bundled_model_path())


def llama(base, lora: str | None = None):
    from llama_cpp import Llama

    return Llama(model_path=base.path, n_ctx=512, logits_all=True, verbose=False, seed=0, lora_path=lora)


def last_logits_cpp(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float64)


def last_logits_hf(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].double().numpy()


def sample(llm, text: str) -> str:
    llm.reset()  # no prompt cache: the same evaluation each time
    return llm.create_completion(text.removeprefix("<bos>"), max_tokens=24, temperature=0.8, seed=7)["choices"][0]["text"]


def centred(logits: np.ndarray) -> np.ndarray:
    """Logits up to a constant (softmax ignores a shift): the change that matters."""
    return logits - logits.mean()


def test_gguf_lora_matches_peft_and_changes_generation(base, tmp_path):
    import torch
    from peft import get_peft_model_state_dict

    text = base.tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = base.tokenizer(text)["input_ids"]
    plain = llama(base)
    assert plain.tokenize(text.encode(), add_bos=True, special=True) == ids  # the same tokens on both sides

    hyper = dpo.Hyper(rank=16, alpha=32.0)
    model = dpo.with_adapter(base, hyper)
    zero = tmp_path / "zero.gguf"
    export.write_gguf_lora(get_peft_model_state_dict(model), zero, hyper.alpha, base.arch)
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.02
    adapter = tmp_path / "random.gguf"
    export.write_gguf_lora(get_peft_model_state_dict(model), adapter, hyper.alpha, base.arch)

    with model.disable_adapter():
        hf_base = last_logits_hf(model, ids)
    hf_lora = last_logits_hf(model, ids)
    with_lora = llama(base, str(adapter))
    cpp_zero, cpp_lora = last_logits_cpp(llama(base, str(zero)), ids), last_logits_cpp(with_lora, ids)
    d_hf, d_cpp = centred(hf_lora - hf_base), centred(cpp_lora - cpp_zero)
    noise = np.linalg.norm(centred(hf_base - cpp_zero))  # the two bases disagree by this much
    cos = d_hf @ d_cpp / np.linalg.norm(d_hf) / np.linalg.norm(d_cpp)
    top_hf, top_cpp = set(np.argsort(-hf_lora)[:10]), set(np.argsort(-cpp_lora)[:10])
    print(f"cosine {cos:.4f}, |d_hf| {np.linalg.norm(d_hf):.1f}, |d_cpp| {np.linalg.norm(d_cpp):.1f}, "
          f"noise {noise:.1f}, top-10 overlap {len(top_hf & top_cpp)}, "
          f"moved {10 - len(top_hf & set(np.argsort(-hf_base)[:10]))}")
    assert np.linalg.norm(d_hf) > 2 * noise  # the adapter's effect stands well above the rounding
    assert cos > 0.9
    assert 0.8 < np.linalg.norm(d_cpp) / np.linalg.norm(d_hf) < 1.25
    assert len(top_hf & top_cpp) >= 7  # the adapted models' likeliest next tokens agree
    a = [sample(plain, text) for _ in "ab"]
    b = sample(with_lora, text)
    model.unload()  # the base model without LoRA layers again, for the next test
    assert a[0] == a[1] and b != a[0]  # same seed: the same text without the adapter, another with it


def test_dpo_step_on_the_bundled_model_exports_an_adapter_llamacpp_loads(base, tmp_path):
    from peft import get_peft_model_state_dict

    row = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "48 + 24 = 72. The answer is 72."}],
           "rejected": [{"role": "assistant", "content": "The answer is 96."}]}
    hyper = dpo.Hyper(rank=8, alpha=16.0, lr=5e-4, batch=2)
    model = dpo.with_adapter(base, hyper)
    stats = dpo.train(model, base.tokenizer, [row, row], hyper, tmp_path / "work")
    assert stats["steps"] == 1 and np.isfinite(stats["loss"])
    path = tmp_path / "trained.gguf"
    export.write_gguf_lora(get_peft_model_state_dict(model), path, hyper.alpha, base.arch)
    text = base.tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = base.tokenizer(text + "The answer is")["input_ids"]
    llm = llama(base, str(path))
    assert np.isfinite(last_logits_cpp(llm, ids)).all()

"""DPO with LoRA on CPU: TRL's ``DPOTrainer`` over a peft model whose reference is the same
model with the adapter switched off (no second copy in memory).

The base model is a GGUF file (the bundled Gemma 3 270M: transformers dequantizes it to fp32,
and its tokenizer is rebuilt to match llama.cpp's: ``tokenizer``) or a transformers directory. A GGUF-loaded model carries a "quantized with GGUF" config
that ``Trainer`` refuses; it is dequantized already, so the marks are dropped.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streams.commands.train.tokenizer import gemma_tokenizer_from_gguf

logger = logging.getLogger(__name__)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Gemma's turns, as llama.cpp's "gemma" chat format writes them (a system turn is folded into
# the user's by the workers; here it is written as a user turn); for a GGUF without a template
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@dataclass(frozen=True)
class Hyper:
    beta: float = 0.1
    lr: float = 5e-5
    rank: int = 16
    alpha: float = 32.0
    batch: int = 2
    epochs: int = 1
    max_length: int = 384
    max_steps: int | None = None  # per training call; None: one pass (epochs) over the new rows
    sft_weight: float = 0.0  # > 0: DPO + this times the chosen side's NLL (RPO, Pang et al. 2024)
    loss: Literal["dpo", "kto"] = "dpo"  # kto: unpaired records, ``streams.commands.train.kto``
    seed: int = 0


@dataclass
class Base:
    model: object
    tokenizer: object
    arch: str  # the llama.cpp architecture the GGUF LoRA names
    path: str


def load_base(path: str) -> Base:
    """A GGUF file (``…/model.gguf``) or a transformers directory, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.suffix == ".gguf":
        kw = {"gguf_file": p.name}
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), dtype=torch.float32, **kw)
        tokenizer = gemma_tokenizer_from_gguf(p) if gguf_arch(p).startswith("gemma") else \
            AutoTokenizer.from_pretrained(str(p.parent), **kw)
        drop_gguf_quantization(model)
        arch = gguf_arch(p)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(p))
        arch = model.config.model_type.removesuffix("_text")
    if not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Base(model, tokenizer, arch, str(p))


def drop_gguf_quantization(model) -> None:
    """The weights are dequantized fp32 already; only the marks remain, and Trainer refuses them."""
    for obj in (model, model.config):
        for attr in ("quantization_config", "hf_quantizer", "quantization_method"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    model.is_quantized = False


def gguf_arch(path: Path) -> str:
    import gguf

    return gguf.GGUFReader(str(path)).fields["general.architecture"].contents()


def with_adapter(base: Base, hyper: Hyper, adapter_dir: str | None = None):
    """The peft model: a fresh LoRA (lora_B zero: the policy starts as the base) or the one
    saved in ``adapter_dir`` (a resumed run), trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir:
        return PeftModel.from_pretrained(base.model, adapter_dir, is_trainable=True)
    config = LoraConfig(r=hyper.rank, lora_alpha=hyper.alpha, target_modules=list(TARGETS), lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base.model, config)


def _drop_ref(model) -> None:
    """TRL makes its reference a frozen copy ("ref") of the adapter as it is when training
    starts: each round's reference is the policy that generated the round's pairs (iterative
    DPO). The copy goes after the round, so the next round copies afresh and only "default" is saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.set_adapter("default")
        model.delete_adapter("ref")
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name


def common_args(hyper: Hyper, workdir: str | os.PathLike) -> dict:
    """The trainer arguments DPO and KTO share: one pass, constant learning rate, nothing saved,
    on the CPU in fp32. TRL's configs default to bf16 autocast and gradient checkpointing; on a
    CPU without native bf16 both cost time, and bf16 rounds the log-probabilities whose small
    differences these losses are made of."""
    return dict(output_dir=str(workdir), per_device_train_batch_size=hyper.batch, num_train_epochs=hyper.epochs,
                max_steps=hyper.max_steps or -1, learning_rate=hyper.lr, max_length=hyper.max_length,
                report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                logging_steps=1, seed=hyper.seed, lr_scheduler_type="constant", disable_tqdm=True,
                dataloader_num_workers=0)


def train(model, tokenizer, rows: list[dict], hyper: Hyper, workdir: str | os.PathLike) -> dict:
    """One DPO round against the adapter as it is now (``_drop_ref``): one pass over ``rows`` (TRL's conversational preference format); returns the steps
    run and the mean loss."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    data = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    args = DPOConfig(beta=hyper.beta, loss_type=["sigmoid", "sft"] if hyper.sft_weight else ["sigmoid"],
                     loss_weights=[1.0, hyper.sft_weight] if hyper.sft_weight else None,
                     **common_args(hyper, workdir))
    return fit(DPOTrainer, model, tokenizer, args, data)


def fit(trainer_class, model, tokenizer, args, data) -> dict:
    """One pass of a TRL trainer (``DPOTrainer``, ``KTOTrainer``) over ``data`` against the
    adapter as it is now (``_drop_ref``); the steps run and the mean loss."""
    from transformers.trainer_callback import PrinterCallback

    _drop_ref(model)
    trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # the loop logs each round itself
    result = trainer.train()
    _drop_ref(model)
    model.eval()
    return {"steps": int(result.global_step), "loss": float(result.training_loss)}

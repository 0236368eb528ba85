"""A tiny randomly initialised Gemma 3 (2 layers, hidden 32) and a BPE tokenizer trained on a
few words, saved as a transformers directory: what `prefstream train --base DIR` loads in the
tests where the bundled 270M model is too slow."""
from __future__ import annotations

from pathlib import Path

WORDS = ["what is one plus one", "two", "three", "the answer is", "0 1 2 3 4 5 6 7 8 9", "question"]


def tiny_gemma(directory: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from streams.commands.train.dpo import GEMMA_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    tok.train_from_iterator(WORDS, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                                 bos_token="<bos>", additional_special_tokens=specials[4:])
    hf.chat_template = GEMMA_TEMPLATE
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                           sliding_window=64, pad_token_id=hf.pad_token_id, eos_token_id=hf.eos_token_id,
                           bos_token_id=hf.bos_token_id)
    Gemma3ForCausalLM(cfg).save_pretrained(str(directory))
    hf.save_pretrained(str(directory))
    return directory

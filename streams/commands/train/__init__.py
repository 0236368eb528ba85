"""What ``prefstream train`` (``streams.commands.training``) uses: ``dpo`` (model, LoRA, TRL),
``export`` (PEFT + GGUF LoRA), ``follow`` (the stream from a stored position), ``state``,
``tokenizer`` (Gemma's, rebuilt from the GGUF), ``loop`` (the rounds)."""

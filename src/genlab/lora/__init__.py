"""LoRA: the low-rank update, PEFT adapters, and fine-tuning runs for text and images."""

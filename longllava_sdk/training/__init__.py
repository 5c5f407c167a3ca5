"""Training: datasets, packing, stages, LoRA / full fine-tuning, checkpoints."""

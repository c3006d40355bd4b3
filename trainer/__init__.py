"""The imagenet18 trainer: the seed's ResNet-50 recipe on today's PyTorch, on CPUs and GPUs, under torchrun."""

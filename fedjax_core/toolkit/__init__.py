"""What algorithms compose: local SGD and its optimizers, losses, drift
corrections, sharpness-aware perturbations, the server model, DP-SGD,
LoRA and pre-trained bases."""

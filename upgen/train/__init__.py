"""Layer 3: the training loop (trainer, the pure train_step, previews, `upgen train`)."""

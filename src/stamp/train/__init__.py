"""Training: configs, data streams, the trainer loop, checkpoints."""

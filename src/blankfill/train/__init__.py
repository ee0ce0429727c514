"""Training: the optimizer and schedule, checkpoints, distributed wrapping, the pretraining loop."""

"""Training and scoring: labels, chips, augmentation, the training loop, metrics."""

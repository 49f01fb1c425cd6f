"""Training, evaluation, checkpoints and configuration."""

"""Training a rung: datasets and augmentation, losses, the loop, DVCLive/MLflow logging per epoch."""

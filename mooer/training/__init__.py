"""Training: the LightningModule, schedules, strategies, accelerators and callbacks."""

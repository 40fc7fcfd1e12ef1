"""What a training run adds to Lightning: ``callbacks`` (last.ckpt, the run's config and random
state in checkpoints, skipped images) and ``resume`` (which checkpoint a run continues from, and
in which folder)."""

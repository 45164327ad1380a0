"""What belongs to a task and not to rewriting: its share of an array, preflight, the engine's lifetime,
requeue, --then-export, the Slurm script, and the demo."""

"""Tasks: datasets plus answer checking. Each module registers its tasks in `harness.registry.TASKS`."""

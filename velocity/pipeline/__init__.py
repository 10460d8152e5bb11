"""The user-facing layer: the `velocity` command, Prefect flows and schedules."""

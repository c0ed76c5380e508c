"""Background jobs: the lifecycle every job, training run and evaluation shares, the heartbeat and the watchdog."""

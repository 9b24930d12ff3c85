"""MLflow for hpcsweep: one run per training, its folder, the outage-proof spool, sync, the shared server, secrets."""

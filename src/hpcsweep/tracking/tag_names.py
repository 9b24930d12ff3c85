"""Names of tags hpcsweep sets that `hpcsweep status` reads: here, with no imports, since status
never imports mlflow (grid/run_reading.py says why) and tags.py does."""

# why a run ended FAILED, where hpcsweep knows better than a traceback (shown by `hpcsweep status`)
FAILURE_REASON = "hpcsweep.failure_reason"

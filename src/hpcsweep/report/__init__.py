"""`hpcsweep report`: the runs of a study read back from MLflow, compared, rendered and plotted."""

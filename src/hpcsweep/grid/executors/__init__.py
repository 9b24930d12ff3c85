"""Where grid points run: here, one after another (local), or as SLURM job arrays (slurm)."""

"""What the machine a training runs on can do: its GPUs, the torch build's kernels, precisions."""

"""hpcsweep: training-efficiency studies of ResNet on CIFAR-10, from one laptop to a SLURM cluster."""

__version__ = "0.1.0"

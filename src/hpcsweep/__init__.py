"""hpcsweep: training-efficiency studies of ResNet on CIFAR-10, from one laptop to a SLURM cluster."""

import logging

__version__ = "0.1.0"

# Our warnings (the tracking server is away, records left for `hpcsweep sync`) must reach job
# logs; something in the training stack sets the root logger to ERROR, so set our own level.
logging.getLogger(__name__).setLevel(logging.INFO)

"""CIFAR-10: getting the archive, preparing tensors, and feeding them to training."""

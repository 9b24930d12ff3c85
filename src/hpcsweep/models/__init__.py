"""Model registry: callers pick an architecture by name without knowing where it is defined."""

from hpcsweep.models.resnet import MODELS, build_model

__all__ = ["MODELS", "build_model"]

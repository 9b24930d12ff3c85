"""Model registry: callers pick an architecture by name without knowing where it is defined."""

from hpcsweep.models.resnet import MODEL_NAMES, MODELS, build_model

__all__ = ["MODELS", "MODEL_NAMES", "build_model"]

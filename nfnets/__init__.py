"""nfnets: Normalizer-Free Networks and Adaptive Gradient Clipping in JAX/Haiku."""

# Each family module registers its models with registry.register_family on import.
from nfnets import (  # noqa: F401
  efficientnet,
  fixup_resnet,
  nf_regnet,
  nf_resnet,
  nfnet,
  nfnet_bn,
  resnet,
  skipinit_resnet,
)
from nfnets.registry import Model, count_params, create_model, list_models

__all__ = ['Model', 'count_params', 'create_model', 'list_models']
__version__ = '0.1.0'

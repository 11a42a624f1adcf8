"""nfnets: Normalizer-Free Networks and Adaptive Gradient Clipping in JAX/Haiku."""

from nfnets.registry import Model, count_params, create_model, list_models

__all__ = ['Model', 'count_params', 'create_model', 'list_models']
__version__ = '0.1.0'

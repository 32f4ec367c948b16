"""vlpuda: Ray-distributed hyperparameter and sparsity search for CLIP-based unsupervised domain
adaptation (CMKD + residual sparse training, optionally FixMatch)."""

__version__ = "0.1.0"

"""ltmp-deploy: learned-threshold token merging and pruning for deployable Vision Transformers."""

__version__ = "0.1.0"

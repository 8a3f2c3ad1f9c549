"""kidrr: KIDRR image-text matching, from a PyTorch checkpoint to a served bundle.

This package root stays free of torch imports so that `kidrr.runtime` can run without torch.
"""
__version__ = "0.1.0"

r"""unfoldmem: cINN/OmniFold unfolding and matrix-element-method likelihoods."""

__version__ = "0.1.0"

__all__ = ["__version__"]

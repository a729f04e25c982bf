r"""Unfolding: cINN posterior sampling, iterative prior removal, OmniFold and IBU."""

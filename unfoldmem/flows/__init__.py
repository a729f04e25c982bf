r"""Flows: encodings, the cINN, transfer-function flows, Bayesian variants and training."""

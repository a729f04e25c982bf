r"""Matrix-element method: per-event likelihoods, normalisation and the VEGAS baseline."""

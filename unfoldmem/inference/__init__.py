r"""Inference: scans, fits, posteriors, Fisher information, calibration and Dask scale-out."""

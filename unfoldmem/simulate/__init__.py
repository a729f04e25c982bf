r"""Simulation: parton-level generation, the parametric detector and the Pythia 8 chain."""

"""Helpers shared by several test modules (settings, samples), so that no test module imports
another."""

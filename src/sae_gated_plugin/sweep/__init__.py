"""Sweeps: a grid of SAEs trained from one activation stream (cached, multi or synthetic), the
results file, the selection of results, plots and comparisons.

Nothing is imported here, so that sweep configs can be validated without torch or SAELens.
"""

"""Sweeps of SAEs from one activation stream, their results, plots and comparisons.

Nothing is imported here, so that sweep configs can be validated without torch or SAELens."""

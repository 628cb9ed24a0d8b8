"""One training run: the run config, SAELens's runner at its seams, training and caching; and
sweeps of many runs from one activation stream.

Nothing is imported here, so that the run config can be validated without torch or SAELens.
"""

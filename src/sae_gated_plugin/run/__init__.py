"""One training run: the run config, SAELens's runner at its seams, training and caching.

Nothing is imported here, so that the run config can be validated without torch or SAELens.
"""

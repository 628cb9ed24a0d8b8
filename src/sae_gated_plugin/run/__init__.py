"""One training run: the run config, the SAELens bridge, training, caching, resume, resampling
and output-folder ownership.

Nothing is imported here, so that the run config can be validated without torch or SAELens.
"""

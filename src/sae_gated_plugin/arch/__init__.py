"""The Gated SAE itself: schema and SAELens config classes, the SAE (loss and decoder
constraint), its autograd ops, checks on saved files, and registration with SAELens.

Nothing is imported here, so that importing a light module of this package (the schema)
does not pull in torch or SAELens.
"""

"""The Gated SAE: schema, SAELens configs, the SAE and its ops, file checks, registration.

Nothing is imported here, so the light modules (the schema) load without torch or SAELens.
"""

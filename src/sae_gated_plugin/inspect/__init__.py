"""`sae-gated inspect`: a static feature browser and a Neuronpedia-format export of any SAE."""

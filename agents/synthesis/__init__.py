"""Pieces the synthesize stage uses: prompt rendering and response perturbations."""

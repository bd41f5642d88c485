"""ptmrec: recommend pre-trained models for a target dataset and a hardware budget.

Nothing is imported here on purpose: ``import ptmrec`` does no work (torch loads on demand).
"""
__version__ = "0.1.0"

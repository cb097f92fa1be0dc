"""Distillation from the teacher cache: pure losses (losses.py), box matching (matching.py) and
the term modules the student RoI heads hold (terms.py)."""

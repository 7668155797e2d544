"""Evaluation protocols beside the fixed one of :mod:`posterkg.gnn.evaluate`."""

from posterkg.evaluation.coldstart import coldstart_eval, random_scores

__all__ = ["coldstart_eval", "random_scores"]

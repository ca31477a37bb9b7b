"""Evaluation, in one place: the measures on evaluation views (`metrics`: accuracy, matching, confusion, per
class, kNN), the evaluations during a run (`during_training`: the classifier, the networks beside it, the
validation split, best.pt), and the report of `semiclust eval` on a saved checkpoint (`report`).

This `__init__` imports nothing, so that each layer imports only the module it needs.
"""

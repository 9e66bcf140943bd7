"""Charts and reports over a sweep's results folder: Pareto fronts of open heads against BLEU, gate maps, curves.

Metric names come from ``model.metrics``.
"""

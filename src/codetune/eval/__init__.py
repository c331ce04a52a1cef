"""Evaluation: metrics, reports and the evaluate stage (`codetune.eval.evaluate.evaluate`).

Generated code runs in `codetune.sandbox`, never here.
"""

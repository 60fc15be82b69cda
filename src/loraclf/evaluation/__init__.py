"""Evaluation: metrics, error analysis, plots, the HTML report and the model card."""

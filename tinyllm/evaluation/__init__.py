"""Evaluation: split scores, paired model comparison, and the evaluate stage's reports."""

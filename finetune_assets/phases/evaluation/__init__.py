"""Evaluation: the scorecard of a variant, guardrails, comparisons, report, review, promotion."""

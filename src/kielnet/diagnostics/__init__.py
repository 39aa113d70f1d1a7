"""Validation metrics and diagnostic plots."""

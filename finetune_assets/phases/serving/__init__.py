"""Serving a variant over HTTP."""

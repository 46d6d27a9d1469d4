"""Scorers: each compares candidate and incumbent on one example at a time (see `base`)."""

"""Structured analysis and surgery: which channels must be removed together, and removing them."""

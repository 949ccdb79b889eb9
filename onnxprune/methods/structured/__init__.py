"""Structured methods: whole channels removed, tensors physically smaller (l1-channel, Intra-Fusion,
chita-channel), on one shared channel session."""

"""Test session setup: torch's OpenMP threads wait passively, set before any test module imports torch
(spinning threads slow every test many times over when another process is busy)."""

from onnxprune.threads import prefer_passive_waits

prefer_passive_waits()

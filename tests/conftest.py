"""Test session setup: torch's OpenMP threads wait passively, set before any test module imports torch
(spinning threads slow every test many times over when another process is busy)."""

import os

# set before onnxprune or torch is imported: the suite runs on shared CI cores whatever their load at start
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

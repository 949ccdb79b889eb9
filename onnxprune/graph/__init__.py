"""ONNX in and out, no torch: loading, canonical form, prunable weights, edits, statistics."""

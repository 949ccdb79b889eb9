"""ONNX Runtime on written files: sessions, accuracy and fidelity, latency."""

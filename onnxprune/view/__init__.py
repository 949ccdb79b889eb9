"""The torch view of an ONNX graph, used for gradients only."""

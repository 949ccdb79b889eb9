"""Layer inputs captured through ONNX Runtime: which tensors feed each prunable layer (``layers``),
streaming them out of a session (``capture``) and their Gram matrices ``H = XᵀX`` (``gram``)."""

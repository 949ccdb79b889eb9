"""The ONNX Runtime layer below activations/, view/ and validate/: sessions and providers, feeds, batched runs."""

"""Unstructured methods: new weights, same shapes (magnitude, CHITA/CHITA++, SparseGPT, Wanda)."""

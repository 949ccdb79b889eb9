"""Calibration and evaluation data: arrays (``.npz``/``.npy``), images, text and Python readers as sources
(``sources.py``), all becoming one ``Dataset`` checked against the model before any work."""

from onnxprune.data.arrays import (LABELS, Dataset, InputSpec, LazyArray, check_dataset, check_input_shapes,
                                   input_specs, parse_input_shapes, sample_shapes, unknown_dims, validate, write_npz)
from onnxprune.data.sources import Source, load_data, summary

__all__ = ["LABELS", "Dataset", "InputSpec", "LazyArray", "Source", "check_dataset", "check_input_shapes",
           "input_specs", "load_data", "parse_input_shapes", "sample_shapes", "summary", "unknown_dims", "validate",
           "write_npz"]

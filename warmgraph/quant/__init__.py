"""FP8: scale methods, calibration, compressed-tensors and INC formats, runtime scale patching
and trivial-scale variants."""

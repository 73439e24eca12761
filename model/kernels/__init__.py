"""Fused CPU kernels (C++ through XLA FFI), built on first use: model.kernels.build."""

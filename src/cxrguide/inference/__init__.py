"""Inference on new files: :mod:`.predictor` (``predict``/``serve``), :mod:`.export` (ONNX and
TorchScript files with a parity check) and :mod:`.onnx_backend` (the ONNX Runtime path)."""

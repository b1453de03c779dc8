"""Checkpoints and Magenta sketch-rnn-js models -> the step-wise ONNX graphs + model.json
(`export.onnx`, `export.magenta`). Needs torch, onnx and onnxruntime (the export extra)."""

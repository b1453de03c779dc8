"""Checkpoints and Magenta sketch-rnn-js models -> the step-wise ONNX graphs + model.json
(`sketchkit.export.onnx`, `sketchkit.export.magenta`). Needs torch, onnx and onnxruntime (the export extra)."""

"""The Triton side of sketchkit: model repositories as data (`sketchkit.serving.repository`) and a local
tritonserver launcher for development and CI (`sketchkit.serving.server`)."""

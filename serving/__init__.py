"""The Triton side of sketchkit: model repositories as data (`serving.repository`) and a local
tritonserver launcher for development and CI (`serving.server`)."""

"""sketchkit: generative vector sketches with sketch-rnn (Ha & Eck, 2017).

The client needs numpy and onnxruntime only; torch lives in `zoo` and `export`.
"""

__version__ = "0.1.0"

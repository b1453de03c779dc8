"""The PyTorch side of sketchkit: model, training, recipes and the shipped models.

`import sketchkit.zoo` stays light (no torch): torch is imported by `sketchkit.zoo.model`, `sketchkit.zoo.train`,
`sketchkit.zoo.evaluate` and `sketchkit.zoo.checkpoint` only.
"""

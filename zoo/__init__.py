"""The PyTorch side of sketchkit: model, training, recipes and the shipped models.

`import zoo` stays light (no torch): torch is imported by `zoo.model`, `zoo.train`,
`zoo.evaluate` and `zoo.checkpoint` only.
"""

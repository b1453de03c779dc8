"""Sample quality as numbers (issue 28), the numpy half: sketches as pictures and sequences the
networks read (`inputs`), per-sketch statistics with KS distances (`stats`), ROC AUC with
DeLong's interval (`auc`) and the Fréchet distance of two feature sets (`frechet`). The networks
that read them (torch) are `sketchkit.zoo.sketchnet`; the report that joins them is
`sketchkit.zoo.quality`."""

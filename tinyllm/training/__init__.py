"""Training: the loop under a step plan or a time budget, its state, optimizers and outputs."""

"""Training: the loop under a step plan or a time budget, its optimizers, recipes and outputs."""

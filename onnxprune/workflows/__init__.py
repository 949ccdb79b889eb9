"""Work built on pruning: sweeps over methods and sparsities, accuracy budgets, the demo."""

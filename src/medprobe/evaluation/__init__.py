"""Layer 1, evaluation: metrics exactly as MedMNIST defines them, with bootstrap CIs. Pure numbers in, numbers out."""

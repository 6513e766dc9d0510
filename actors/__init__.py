"""Ray Data callables and Ray actors that keep models loaded (miners, embedders, predictors)."""

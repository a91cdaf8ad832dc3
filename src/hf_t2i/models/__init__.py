"""One folder per artifact with weights: configuration, modeling and processing of each model."""

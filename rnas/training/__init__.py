"""One trainer for every stage, with a pluggable perturbation."""

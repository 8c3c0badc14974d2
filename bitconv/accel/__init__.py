"""Reference and speed kernels: the compiled extension when built, else numpy with the same bytes."""

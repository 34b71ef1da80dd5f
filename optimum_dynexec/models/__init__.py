"""optimum-style model classes with dynamic execution."""

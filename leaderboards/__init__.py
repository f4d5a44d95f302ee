"""Published results as data, and paper-style tables."""

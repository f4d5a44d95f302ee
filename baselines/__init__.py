"""OOD scoring methods (MSP, energy, ODIN, Mahalanobis, RPL, ...)."""

"""Layer 9, the driver: preflight, the sweep, finalize (selection, registration, review), the terminal."""

"""Layer 9, the driver: preflight, the sweep, finalize (selection, registration, review), the terminal.

The review of a finished sweep is four modules: `tables` and `description` (pure text),
`plots` (matplotlib) and `publish` (the MLflow writes); `provenance` names the sweep's source,
`environment` holds what a sweep sets in the driver process, `progress` the live table.
"""

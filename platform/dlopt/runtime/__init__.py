"""Layer 6, Ray: the Tune trial, the Ray Train worker entry points, Ray search objects, PBT.

The only layer below the driver that imports Ray (docs/architecture.md, "Layers").
"""

"""Layer 6, Ray: the Tune trial, the Ray Train worker entry points, Ray search objects, PBT.

With `dlopt.tracking.callback` (the Tune callback), the only code below the driver that
imports Ray (docs/architecture.md, "Layers").
"""

"""Hazardous primitives: one per file. ``privfed`` must not import these; use :mod:`secure_agg.session`."""

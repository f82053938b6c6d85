"""Adapters that let other libraries use vt_core kernels (``vt_core.integrations.transformers``)."""

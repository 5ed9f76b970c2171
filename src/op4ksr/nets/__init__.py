"""Frozen pretrained networks shared by several layers (the perceptual networks of the LPIPS/DISTS
metrics and training losses), with their asset recipes beside them; imports only ``op4ksr.assets``
and ``op4ksr.utils``, so metrics and losses both use them without importing each other."""

"""Batches of image files for ``op4ksr upscale``, above :mod:`op4ksr.api`.

``plan`` collects inputs and chooses outputs before any model is loaded, ``run`` upscales one
file per call (:func:`~op4ksr.batch.run.process_item`, which never raises for a bad file) and
loops over a plan locally, ``cluster`` runs the same per-file function on Ray. Image reading and
writing itself is :mod:`op4ksr.io`.
"""

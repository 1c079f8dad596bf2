"""Image optimisation against a frozen network: ideal class images and adversarial examples.

* :mod:`.network` — the network under study, frozen, with its normalisation inside.
* :mod:`.param` — pixel and Fourier (decorrelated colour, sigmoid) parameterisations.
* :mod:`.regularizers`, :mod:`.transforms`, :mod:`.objectives` — priors, robustness, losses.
* :mod:`.ideal`, :mod:`.attacks` — the two optimisations (one job = one batch of images).
* :mod:`.jobs`, :mod:`.module` — jobs as a dataset, the LightningModule, gathering results.
* :mod:`.metrics`, :mod:`.render` — per-image records, summaries, PNGs, grids, loggers and W&B.
* :mod:`.outputs` — the run directory's files (PNGs, grid, results.json/.pt, metrics.json).

The entry point is :mod:`tlresearch.visualize`.
"""

"""Adaptive diffusion steps (StepSaver) and the embedded text-to-image model it runs on offline.

* ``scenes``: procedural scenes described by text (the data set and its structured labels);
* ``tokenizer``, ``tiny_sd``: the scenes model in diffusers' Stable Diffusion form (``SCENES_SD_DIR``,
  committed weights) and tiny random pipelines for tests;
* ``correctness``: the scene-correctness metric (a classifier reading shapes, colours, counts back);
* ``training``, ``train``: ``python -m optimum_dynexec.diffusion.train`` rebuilds the committed weights;
* ``grid``: sample grids (prompt x step count).

Nothing here is imported by ``import optimum_dynexec``; diffusers is needed (``pip install
optimum-dynexec[diffusion]``).
"""

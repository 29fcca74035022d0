"""Training: from normal images to a calibrated model artifact.

Three modules, each importing only the one before it:

* ``loop``: the two-stage loop (stage 1 MAE, stage 2 corruption and repair) on
  arrays of images, in one plain process. No Ray, no files.
* ``local``: the steps from a dataset URI to an artifact (load and split the
  images, run the loop, calibrate on the held-back normals, package);
  ``train_local`` runs them all in this process (``raymae train --local``).
* ``ray_driver``: the same steps on a Ray Train worker group (``raymae train``),
  with a checkpoint after every epoch and resumption after a failure.

``loop`` <- ``local`` <- ``ray_driver``: nothing here imports Ray except
``ray_driver``, and only inside its functions.
"""

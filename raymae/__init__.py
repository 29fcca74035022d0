"""raymae: unsupervised visual anomaly detection (ISSTAD two-stage MAE) on Ray.

Entry points: ``raymae.cli`` (the ``raymae`` command), ``raymae.training.local.train_local``
and ``raymae.training.ray_driver.run_training`` (training), ``raymae.artifact.ModelArtifact``
(a trained model folder) and ``raymae.inference.Predictor`` (the inference path).
"""

__version__ = "0.1.0"

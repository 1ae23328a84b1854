"""Training PoolFormers with the paper's recipe on ``tf.distribute`` (installed as
``keras_poolformer.training``).

- ``configs.py``: one config per experiment, every number of the recipe.
- ``data.py``: folder, TFDS and synthetic sources; resumable, seeded pipelines.
- ``augment.py``: the recipe's augmentations as stateless TensorFlow ops.
- ``trainer.py``: strategy, model, optimizer, the resumable loop, evaluation.

Command line: ``keras-poolformer train --config NAME --data SPEC --output DIR``.
"""

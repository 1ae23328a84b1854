"""Grad-CAM heat maps: where a PoolFormer looks when it picks a class.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. The paper's supplementary C shows these maps for PoolFormer
(more concentrated on the object than a ResNet's or a DeiT's); like the official
script, the default layer is the output of the last stage (for the MetaFormer
baselines too: their blocks are named as PoolFormer's, ``stage{s}_block{j}``).
"""

import numpy as np


def _target_layer(model, layer):
    from keras_poolformer.models import stage_output_layers

    if layer is None:
        return stage_output_layers(model)[-1]
    return model.get_layer(layer) if isinstance(layer, str) else layer


def _upsampling_matrix(size, cells):
    """``(size, cells)`` linear-interpolation weights from a feature map's cells to pixels.

    In this architecture (and the official one) every downsampling pads so that cell
    ``i`` of a stride-``s`` map is centred on pixel ``s * i + 1``: the 7x7 / 4 stem with
    padding 2 centres cell ``i`` on pixel ``4i + 1``, and each 3x3 / 2 conv with padding 1
    centres its cell ``j`` on the input's cell ``2j``. A plain image resize would put it at
    ``s * i + (s - 1) / 2`` instead, nearly half a cell off toward the bottom right
    (15 pixels at stride 32), so the heat map is sampled at the true centres.
    """
    stride = max(1, round(size / cells))
    position = np.clip((np.arange(size) - 1.0) / stride, 0, cells - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, cells - 1)
    frac = position - low
    weights = np.zeros((size, cells), np.float32)
    weights[np.arange(size), low] += 1 - frac
    weights[np.arange(size), high] += frac
    return weights


def _score_output(model):
    """The tensor whose entries are the class scores: the logits when there is a head."""
    try:
        return model.get_layer("head").output
    except ValueError:
        return model.output


def gradcam(model, images, class_index=None, layer=None):
    """Grad-CAM heat maps of ``model`` for ``images``.

    For each image: the gradient of the class score (the logit, before any softmax)
    with respect to the feature map of ``layer``, averaged over space, weights the
    channels of that map; their weighted sum, through a ReLU, is resized to the
    image (linearly, each cell at the pixel its receptive field is centred on) and
    scaled to [0, 1].

    Args:
        model: a classifier built by this package (PoolFormer, a hybrid or a baseline).
        images: ``(n, height, width, 3)`` as the model takes them (RGB 0..255).
        class_index: the class to explain, an int or one per image; default each
            image's top class.
        layer: a layer or layer name; default the last stage's output (stride 32).

    Returns:
        ``(heatmaps, class_indices)``: float32 ``(n, height, width)`` in [0, 1], and
        the explained class of each image.

    Example:
    >>> maps, classes = keras_poolformer.gradcam(model, images)
    """
    import keras
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, np.float32))
    if images.shape.rank != 4:
        raise ValueError(f"images must be (n, height, width, 3); got shape {images.shape}.")
    target = _target_layer(model, layer)
    probe = keras.Model(model.input, [target.output, _score_output(model)])
    with tf.GradientTape() as tape:
        features, scores = probe(images, training=False)
        features = tf.cast(features, tf.float32)
        scores = tf.cast(scores, tf.float32)
        if class_index is None:
            chosen = tf.argmax(scores, axis=1, output_type=tf.int32)
        else:
            chosen = tf.broadcast_to(tf.constant(class_index, tf.int32), [tf.shape(scores)[0]])
        score = tf.reduce_sum(tf.gather(scores, chosen, axis=1, batch_dims=1))
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
    rows = _upsampling_matrix(images.shape[1], cam.shape[1])
    cols = _upsampling_matrix(images.shape[2], cam.shape[2])
    cam = tf.einsum("yh,bhw,xw->byx", rows, cam, cols)
    low = tf.reduce_min(cam, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
    cam = (cam - low) / tf.maximum(high - low, 1e-12)
    return cam.numpy().astype(np.float32), chosen.numpy()


def save_overlay(image, heatmap, title, path):
    """Writes a PNG: the image, the image under the heat map, and the heat map alone."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("Grad-CAM pictures need matplotlib: pip install matplotlib") from error
    from keras_poolformer import files

    image = np.clip(np.asarray(image) / 255.0, 0, 1)
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100)
    axes[0].imshow(image)
    axes[0].set_title("image")
    axes[1].imshow(image)
    axes[1].imshow(heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM")
    shown = axes[2].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
    axes[2].set_title("heat map")
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    with files.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)

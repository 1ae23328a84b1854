"""The independent PyTorch reference: Hugging Face transformers' PoolFormer.

Its ``PoolFormerForImageClassification`` is a separate implementation of the
original architecture (GroupNorm(1, C) with eps 1e-5, ``count_include_pad=False``
pooling, final norm before the pooling); it runs on CPU torch. Its input
normalisation is torchvision's, written out here (:func:`torchvision_normalize`).
Nothing here uses keras_poolformer's code or constants.
"""

import re

import numpy as np

# The official layout's key for each transformers key (see porting.py for the layout).
_HF_TO_OFFICIAL = [
    (r"^poolformer\.encoder\.patch_embeddings\.0\.projection\.", lambda m: "patch_embed.proj."),
    (
        r"^poolformer\.encoder\.patch_embeddings\.([123])\.projection\.",
        lambda m: f"network.{2 * int(m[1]) - 1}.proj.",
    ),
    (
        r"^poolformer\.encoder\.block\.(\d+)\.(\d+)\.",
        lambda m: f"network.{2 * int(m[1])}.{m[2]}.",
    ),
    (r"\.before_norm\.", lambda m: ".norm1."),
    (r"\.after_norm\.", lambda m: ".norm2."),
    (r"\.output\.conv1\.", lambda m: ".mlp.fc1."),
    (r"\.output\.conv2\.", lambda m: ".mlp.fc2."),
    (r"^classifier\.", lambda m: "head."),
]


def official_key(hf_key):
    """Renames one transformers PoolFormer key to the official sail-sg key."""
    key = hf_key
    for pattern, replacement in _HF_TO_OFFICIAL:
        key = re.sub(pattern, replacement, key)
    return key


def reference_model(depths, dims, layer_scale_init_value=1e-5, classes=1000, seed=0):
    """A transformers PoolFormer with every weight set to non-trivial random values.

    Layer scales are around 0.1 and norm affines around 1 +- 0.2 so that every
    branch of every block changes the output; conv and linear weights are scaled
    by their fan-in so activations keep a sane size through 48 blocks.

    Returns:
        ``(torch_model, official_state_dict)`` where the state dict holds float32
        numpy arrays under the official keys.
    """
    import torch
    from transformers import PoolFormerConfig, PoolFormerForImageClassification

    config = PoolFormerConfig(
        depths=list(depths),
        hidden_sizes=list(dims),
        layer_scale_init_value=layer_scale_init_value,
        num_labels=classes,
        hidden_act="gelu",
    )
    model = PoolFormerForImageClassification(config).eval()
    rng = np.random.default_rng(seed)
    state = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = tuple(param.shape)
            if "layer_scale" in name:
                value = rng.normal(0.1, 0.03, shape)
            elif "norm" in name and name.endswith("weight"):
                value = rng.uniform(0.8, 1.2, shape)
            elif "norm" in name and name.endswith("bias"):
                value = rng.uniform(-0.2, 0.2, shape)
            elif name.endswith("bias"):
                value = rng.normal(0.0, 0.05, shape)
            else:
                fan_in = int(np.prod(shape[1:]))
                value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
            value = value.astype(np.float32)
            param.copy_(torch.from_numpy(value))
            state[official_key(name)] = value
    return model, state


# torchvision's ImageNet normalisation (``ToTensor()`` then ``Normalize(mean, std)``),
# written out here with its constants as literals, RGB order, so that the reference's
# inputs do not come from keras_poolformer's own constants or code.
TORCHVISION_IMAGENET_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_normalize(pixels):
    """Channels-last RGB images in 0..255 normalised in torch as torchvision does for
    ImageNet: scaled by 1/255 (``ToTensor``), then ``(x - mean) / std`` per channel
    (``Normalize``). Returns channels-last float32 numpy, for :func:`reference_logits`."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(0, 3, 1, 2)
    x = x.div(255)
    mean = torch.tensor(TORCHVISION_IMAGENET_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(TORCHVISION_IMAGENET_STD, dtype=torch.float32).view(-1, 1, 1)
    return x.sub(mean).div(std).permute(0, 2, 3, 1).numpy()


def reference_logits(model, normalized_images):
    """Logits of the reference for channels-last, already normalised images."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(normalized_images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return model(pixel_values=x).logits.numpy()

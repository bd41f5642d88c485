"""Parameters: one typed dataclass per subsystem, one source of defaults.

A parameter set (``params/*.yaml``) holds overrides only. ``load(path)`` merges them into
the defaults below and validates every key and type *before* any work starts:

    >>> P = load("params/smoke.yaml")
    >>> P.zoo.families
    ['simplecnn', 'resnet', ...]

An unknown key or a wrong type raises ``ParamsError`` naming the file, the key and the valid
keys (papermill by itself would only warn).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A parameter file is malformed: unknown key, wrong type, bad value."""


@dataclass
class RunParams:
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


@dataclass
class DataParams:
    # Offline datasets need no setting; these add sources for clusters and users.
    image_folders: dict[str, str] = field(default_factory=dict)  # name -> folder (one subfolder per class)
    hf_datasets: dict[str, str] = field(default_factory=dict)  # name -> Hugging Face dataset id
    hf_split: str = "train"
    hf_image_key: str = "image"
    hf_label_key: str = "label"
    glyph_fonts: list[str] = field(default_factory=list)  # font files; empty = discovered on this machine
    cache_dir: str = ""  # where decoded datasets and built encoders are cached; "" = $PTMREC_CACHE or <runs>/_cache


@dataclass
class TasksParams:
    """Target tasks: class subsets and domains of real datasets, never a source task."""

    # dataset -> number of tasks drawn from it: 16 datasets, 12 visual domains, 156 tasks
    datasets: dict[str, int] = field(default_factory=lambda: {
        "fmnist": 12, "mnist": 9, "digits": 8, "clipart": 10, "glyphs": 12, "textures": 8, "emoji": 12, "stamps": 6,
        "cards": 12, "silhouettes": 9, "handwriting": 12, "gimp-textures": 8, "icon-themes": 10, "mdi-icons": 10,
        "health-icons": 8, "photo-textures": 10})
    image_size: int = 64  # pixels; every pool image is stored RGB uint8 at this size
    min_classes: int = 2
    max_classes: int = 5
    train_per_class: int = 20
    test_per_class: int = 30
    # dataset -> [train, test] per class, overriding the two above: more training images where the data has them
    # (fewer estimators in their degenerate D > N regime), fewer where a class has only a few dozen. 20 test images
    # per class, not 10: with 10 the run of 2026-12-01 measured a fresh-split noise ceiling of 0.50 (weighted tau),
    # which capped every method near it; 20 costs the feature store 30% more images (24k per model, not 18.5k)
    sizes: dict[str, list[int]] = field(default_factory=lambda: {
        **{d: [30, 20] for d in ("fmnist", "mnist", "glyphs", "silhouettes", "textures", "photo-textures",
                                  "gimp-textures", "emoji", "digits", "cards")},
        "icon-themes": [10, 10], "mdi-icons": [15, 10], "health-icons": [15, 10], "handwriting": [10, 10],
        "stamps": [10, 10], "clipart": [10, 10]})


@dataclass
class ZooParams:
    families: list[str] = field(default_factory=lambda: ["simplecnn", "resnet", "mobilenet", "vit", "mlpmixer"])
    sources: list[str] = field(
        default_factory=lambda: [
            "fmnist", "mnist", "glyph-letters", "glyph-fonts", "glyph-digits", "clipart-top", "textures",
            "emoji", "cards", "handwriting", "icon-themes", "silhouettes",
        ]
    )  # source tasks the scratch families are pretrained on (ImageNet comes with EfficientNet-Lite)
    widths: list[int] = field(default_factory=lambda: [16])  # channel width multipliers (one model per width)
    image_size: int = 32  # input size of the scratch families
    train_per_class: int = 300
    epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    lite_variants: list[str] = field(default_factory=lambda: ["lite0", "lite1", "lite2"])  # packaged ImageNet weights
    lite_finetune: dict[str, list[str]] = field(
        default_factory=lambda: {"lite0": ["fmnist", "clipart-top"], "lite1": ["textures"]}
    )  # lite variant -> source tasks it is fine-tuned on
    lite_image_size: int = 64  # the world's images are 64 px: a larger input adds forward cost, not detail
    lite_finetune_steps: int = 80
    # Pretrained bases beyond EfficientNet-Lite (ptmrec.backbones.list_backbones()); each enters the zoo with its
    # packaged weights and source head as "<base>-<source task>", e.g. mobilenet_v2-imagenet
    backbones: list[str] = field(
        default_factory=lambda: ["mobilenet_v2", "efficientnet_b0", "resnet50_thin", "mobilenet_v2_keras"]
    )
    # base -> input px; absent = the base's default. 64 for the MobileNets too: the world's images are 64 px, and
    # at 96 px each of them costs the default world's feature store twice the forward seconds
    backbone_image_size: dict[str, int] = field(default_factory=lambda: {"mobilenet_v2": 64, "mobilenet_v2_keras": 64})
    # base -> source tasks it is fine-tuned on ("<base>-ft-<source>"); any base of ptmrec.zoo.base_names(),
    # early stages frozen by each family's rule. Lite bases here ("efficientnet_lite0") fine-tune like lite_finetune.
    finetune: dict[str, list[str]] = field(default_factory=lambda: {
        "mobilenet_v2": ["emoji"], "efficientnet_b0": ["handwriting"], "resnet50_thin": ["icon-themes"],
        "mobilenet_v2_keras": ["silhouettes"]})
    finetune_steps: int = 80  # steps of every non-Lite fine-tune
    hub_models: list[str] = field(default_factory=list)  # Hugging Face ids (clusters)


@dataclass
class GroundTruthParams:
    """Transfer accuracy of every model on every task (the schedules are documented in ptmrec.groundtruth)."""

    methods: list[str] = field(default_factory=lambda: ["linear_probe", "finetune"])
    target_method: str = "linear_probe"  # the method later stages rank against
    probe_l2: float = 1e-3
    probe_steps: int = 100
    finetune_steps: int = 20
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 16
    finetune_tasks: int = 16  # fine-tune on this many tasks (round-robin over datasets: one per dataset); 0 = every task
    noise_seed: int = 1  # a second ground-truth run with this seed gives the noise ceiling
    batch_size: int = 256  # feature-extraction batch


@dataclass
class ExtractParams:
    """Model parameter vectors (stage 02)."""

    extractor: str = "stats"  # a registered extractor design (ptmrec.extract.list_extractors())
    length: int = 8192  # fixed vector length, whatever the architecture
    shard_size: int = 64  # models per NPZ shard
    # Behaviour tokens (ptmrec.behaviour): source-role images of these datasets (any that is a target dataset of
    # the world is dropped), probe_classes classes x probe_per_class images each
    probe_datasets: list[str] = field(default_factory=lambda: ["material-symbols", "glyph-fonts", "glyph-letters"])
    probe_classes: int = 6
    probe_per_class: int = 10


@dataclass
class AutoEncoderParams:
    """ModelAutoEncoder: parameter vector -> model token (stage 03). Saved beside its weights."""

    input_dim: int = 8192
    code_dim: int = 512
    hidden: list[int] = field(default_factory=lambda: [2048])
    activation: str = "gelu"  # gelu | relu | leaky_relu
    dropout: float = 0.1
    code_l1_penalty: float = 0.0
    reconstruction_loss: str = "mse"  # mse | smooth_l1


@dataclass
class TrainParams:
    """A Trainer's schedule: one section per trainer (``train_autoencoder``, ``train_ranker``)."""

    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | plateau | none
    early_stopping_patience: int = 20  # epochs without validation improvement; 0 = off
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    val_fraction: float = 0.2


@dataclass
class EncoderParams:
    """The image encoder behind dataset tokens (stage 04)."""

    name: str = "embedded"  # a registered encoder: "embedded" (built offline) or "open_clip"
    open_clip_model: str = ""  # open_clip model name, e.g. "ViT-B-32" (clusters)
    pretrained: str = ""  # open_clip pretrained tag, e.g. "laion2b_s34b_b79k" (clusters)
    checkpoint: str = ""  # a local open_clip checkpoint file, instead of a pretrained tag
    batch_size: int = 64
    # The embedded encoder (name "embedded"): EfficientNet-Lite0 + MiniLM towers, projection heads aligned
    # contrastively on clip-art image-text pairs (ptmrec.encoders), cached under <runs>/_cache/encoders/.
    image_size: int = 64  # its input size (px); the default world's task images are 64 px
    embed_dim: int = 256  # joint embedding size (the token dimension)
    context_length: int = 64  # text tokens per caption
    align_pairs: int = 0  # source-role clip-art pairs to align on; 0 = all (~3,400)
    align_heldout: int = 300  # distinct captions held out (with all their pairs) for retrieval recall
    align_steps: int = 500
    align_batch: int = 256
    align_lr: float = 1e-3
    align_weight_decay: float = 0.1
    align_px: int = 64  # clip art is decoded at this size (the clip-art pools' decode cache is shared)
    align_flip: bool = True  # also align mirrored images (features cached for both)
    align_seed: int = 0


@dataclass
class TokensParams:
    """Dataset tokens (stage 04): encoder embeddings of a class-balanced sample of each task."""

    per_class: int = 16  # images per class in the sample (a class with fewer gives all it has, reported)
    kind: str = "images"  # images (one token per image) | prototypes (one token per class: the class mean)
    shard_size: int = 16  # tasks per NPZ shard
    splits: list[str] = field(default_factory=lambda: ["train"])  # task splits the sample is drawn from


@dataclass
class BaselinesParams:
    """Classic transferability estimators (stage 05), scored on each task's training split."""

    scorers: list[str] = field(default_factory=lambda: [
        "logme", "leep", "nleep", "nce", "hscore", "regularized_hscore", "gbc", "sfda", "transrate", "parc",
        "knn", "linear",
    ])  # registered scorers (ptmrec.transferability.list_scorers())
    batch_size: int = 256  # forward-pass batch


@dataclass
class RankerParams:
    """The ranker (stage 06): dataset tokens attend to model tokens; saved beside its weights."""

    architecture: str = "cross_attention"  # cross_attention (RankingCrossAttentionTransformer) | similarity (CustomSimilarityTransformer)
    d_model: int = 64  # 128 trained 2x slower per epoch and validated no better (early-stopping validation)
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1  # on the residual branches and the feed-forward layers
    attention_dropout: float = 0.0  # on the attention weights: on CPU it made attention 5x slower
    loss: str = "listnet"  # listnet | listmle | pairwise
    model_tokens: str = "autoencoder"  # autoencoder (stage 03 codes) | vectors (raw stage 02 vectors) | ids (learned, no
    # weights) | behaviour (stage 02 behaviour tokens) | both (autoencoder codes and behaviour tokens side by side)
    dataset_tokens: bool = True  # False: a learned constant instead (ablation)
    max_dataset_tokens: int = 64  # tokens per task kept for the ranker (a class-balanced subset)
    candidate_attention: str = "full"  # full: self-attention across candidates, O(N^2) | induced: O(N), for hub-size zoos
    inducing: int = 16  # inducing points of candidate_attention "induced"
    evidence: list[str] = field(default_factory=lambda: ["logme", "nce", "leep", "knn", "hscore", "gbc"])
    # stage-05 estimators whose scores on a probed model's forward pass the ranker sees ([] = tokens only)


@dataclass
class EvaluateParams:
    """Evaluation (stage 07): leave-datasets-out and leave-models-out, every method on the same tasks."""

    model_folds: int = 3  # leave-models-out folds, grouped by lineage (0 = no leave-models-out)
    model_dataset_groups: int = 4  # ... crossed with this many groups of held-out datasets (0 = one per dataset)
    top_k: int = 3  # for top-k hit rate and nDCG@k
    ablations: list[str] = field(default_factory=lambda: [
        "no_neighbours", "no_model_tokens", "no_dataset_tokens", "raw_vectors", "behaviour_tokens",
        "weights_and_behaviour"])
    seeds: int = 3  # the ranker is trained with seeds run.seed, run.seed + 1, ... (mean and spread reported)
    inner_grid: dict[str, list[str | int | float | bool]] = field(default_factory=lambda: {"loss": ["listnet", "pairwise"]})
    # ranker settings chosen per leave-datasets-out fold by inner validation on its training datasets ({} = none)
    inner_folds: int = 2  # inner leave-datasets-out groups of the training datasets
    probe_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # the frontier: k probed models (+ all)


@dataclass
class HardwareParams:
    """Hardware profiling (stage 08) and the budgets of named hardware profiles."""

    devices: list[str] = field(default_factory=lambda: ["cpu"])  # devices to profile; absent ones are an error
    warmup: int = 10  # untimed calls before timing
    repeats: int = 50  # timed batch-1 calls per round
    rounds: int = 3  # timing rounds over the whole zoo (their spread is the latency CV)
    batch_size: int = 32  # throughput batch
    threads: int = 1  # torch threads while profiling (0 = torch's default); 1 repeats beside other work and gives CPU time
    latency_stat: str = "p50"  # the latency budgets hold for: p50 | p95 (wall clock) | cpu_p50 (CPU time, 1 thread)
    profiles: dict[str, dict[str, float | str]] = field(default_factory=lambda: {
        # limits sit in gaps of the default zoo's range as stage 08 measures it, away from timing noise:
        # edge keeps the 32-px scratch models (<= 0.73 MB, a few ms); mobile adds the fine-tuned Lite0s (15.5 MB),
        # not the ImageNet Lites, whose 1000-class heads stay resident (>= 20.3 MB)
        "edge-cpu": {"device": "cpu", "max_latency_ms": 10.0, "max_memory_mb": 1.0},
        "mobile-cpu": {"device": "cpu", "max_latency_ms": 100.0, "max_memory_mb": 17.0},
        "datacentre-gpu": {"device": "cuda", "max_latency_ms": 10.0, "max_memory_mb": 4096.0},
    })  # named hardware profiles: device + budgets (a budget left out = no limit)


@dataclass
class Params:
    run: RunParams = field(default_factory=RunParams)
    data: DataParams = field(default_factory=DataParams)
    tasks: TasksParams = field(default_factory=TasksParams)
    zoo: ZooParams = field(default_factory=ZooParams)
    groundtruth: GroundTruthParams = field(default_factory=GroundTruthParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    autoencoder: AutoEncoderParams = field(default_factory=AutoEncoderParams)
    train_autoencoder: TrainParams = field(default_factory=TrainParams)  # stage 03 (and stage 07's refits)
    train_ranker: TrainParams = field(default_factory=lambda: TrainParams(early_stopping_patience=5))  # stages 06, 07
    # (replaying patience 8's validation curves on the 16 default folds, patience 5 keeps the same best epoch in 13
    # and trains 27% fewer epochs)
    encoder: EncoderParams = field(default_factory=EncoderParams)
    tokens: TokensParams = field(default_factory=TokensParams)
    baselines: BaselinesParams = field(default_factory=BaselinesParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    hardware: HardwareParams = field(default_factory=HardwareParams)
    name: str = "default"  # the parameter set's name: runs/<name>/
    source: str = ""  # the YAML file it came from

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections, for stage caching."""
        blob = json.dumps({s: asdict(getattr(self, s)) for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = [f.name for f in dataclasses.fields(Params) if dataclasses.is_dataclass(f.default_factory)]


def _type_ok(value: Any, tp: Any) -> bool:
    """True when ``value`` (from YAML) fits the annotation ``tp``; ints pass for floats."""
    origin = typing.get_origin(tp)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool):
        return isinstance(value, tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def _merge(obj: Any, overrides: dict, where: str, origin: str) -> Any:
    """Return a copy of dataclass ``obj`` with ``overrides`` applied, validated recursively."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in overrides.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise ParamsError(f"{origin}: unknown key '{name}'; valid keys here: {', '.join(sorted(fields))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ParamsError(f"{origin}: '{name}' must be a mapping of its keys, got {type(value).__name__}")
            changes[key] = _merge(current, value, name, origin)
        elif not _type_ok(value, hints[key]):
            raise ParamsError(
                f"{origin}: '{name}' must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}"
            )
        else:
            changes[key] = float(value) if hints[key] is float else value
    return dataclasses.replace(obj, **changes)


def _check_values(P: Params, origin: str) -> None:
    """Cross-field checks that types alone cannot express."""
    t, g = P.tasks, P.groundtruth
    if not 2 <= t.min_classes <= t.max_classes:
        raise ParamsError(f"{origin}: need 2 <= tasks.min_classes <= tasks.max_classes, got {t.min_classes}, {t.max_classes}")
    if g.target_method not in g.methods:
        raise ParamsError(f"{origin}: groundtruth.target_method '{g.target_method}' is not in groundtruth.methods")
    for name in ("train_per_class", "test_per_class", "image_size"):
        if getattr(t, name) < 1:
            raise ParamsError(f"{origin}: tasks.{name} must be positive")
    for name, sizes in t.sizes.items():
        if len(sizes) != 2 or min(sizes) < 1:
            raise ParamsError(f"{origin}: tasks.sizes.{name} must be [train, test] images per class, both positive, "
                              f"got {sizes}")
    if P.extract.probe_classes < 2 or P.extract.probe_per_class < 2:
        raise ParamsError(f"{origin}: extract.probe_classes and extract.probe_per_class must be at least 2 "
                          f"(a 1-NN accuracy needs two classes and a neighbour), got {P.extract.probe_classes}, "
                          f"{P.extract.probe_per_class}")
    _check_zoo(P.zoo, origin)
    _check_hardware(P.hardware, origin)
    _check_evaluate(P.evaluate, origin)


def _check_evaluate(e: EvaluateParams, origin: str) -> None:
    if e.seeds < 1 or e.inner_folds < 2 or e.model_folds < 0:
        raise ParamsError(f"{origin}: need evaluate.seeds >= 1, evaluate.inner_folds >= 2 and evaluate.model_folds >= 0")
    keys = {f.name for f in dataclasses.fields(RankerParams)}
    for key, values in e.inner_grid.items():
        if key not in keys:
            raise ParamsError(f"{origin}: evaluate.inner_grid has '{key}', not a ranker setting; valid: {', '.join(sorted(keys))}")
        for v in values:
            try:
                _merge(RankerParams(), {key: v}, "ranker", origin)
            except ParamsError as err:
                raise ParamsError(f"{origin}: evaluate.inner_grid.{key}: {err}") from None


def _check_zoo(z: ZooParams, origin: str) -> None:
    """Sizes and steps positive, no base or fine-tune listed twice (names are checked against the registry by
    ptmrec.zoo before any work: importing it here would pull torch into every parameter check)."""
    for name in ("image_size", "lite_image_size", "finetune_steps", "lite_finetune_steps"):
        if getattr(z, name) < 1:
            raise ParamsError(f"{origin}: zoo.{name} must be positive, got {getattr(z, name)}")
    for base, px in z.backbone_image_size.items():
        if px < 16:
            raise ParamsError(f"{origin}: zoo.backbone_image_size.{base} must be at least 16 px, got {px}")
    if len(set(z.backbones)) != len(z.backbones):
        raise ParamsError(f"{origin}: zoo.backbones lists a base twice: {z.backbones}")
    for base, srcs in z.finetune.items():
        if len(set(srcs)) != len(srcs):
            raise ParamsError(f"{origin}: zoo.finetune.{base} lists a source task twice: {srcs}")
        lite = base.removeprefix("efficientnet_")
        if base.startswith("efficientnet_lite") and set(srcs) & set(z.lite_finetune.get(lite, [])):
            raise ParamsError(f"{origin}: zoo.finetune.{base} repeats sources of zoo.lite_finetune.{lite}")


def _check_hardware(h: HardwareParams, origin: str) -> None:
    for name in ("repeats", "rounds", "batch_size"):
        if getattr(h, name) < 1:
            raise ParamsError(f"{origin}: hardware.{name} must be positive, got {getattr(h, name)}")
    for name in ("warmup", "threads"):
        if getattr(h, name) < 0:
            raise ParamsError(f"{origin}: hardware.{name} must be >= 0, got {getattr(h, name)}")
    if h.latency_stat not in ("p50", "p95", "cpu_p50"):
        raise ParamsError(f"{origin}: hardware.latency_stat must be p50, p95 or cpu_p50, got '{h.latency_stat}'")
    if h.latency_stat == "cpu_p50" and h.threads != 1:
        raise ParamsError(f"{origin}: hardware.latency_stat cpu_p50 needs hardware.threads 1 (CPU time of one thread)")
    device = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
    for d in h.devices:
        if not device.match(d):
            raise ParamsError(f"{origin}: hardware.devices has '{d}'; valid: cpu, cuda, cuda:<n>, mps")
    valid = ("device", "max_latency_ms", "max_memory_mb")
    for name, spec in h.profiles.items():
        key = f"hardware.profiles.{name}"
        for k, v in spec.items():
            if k not in valid:
                raise ParamsError(f"{origin}: unknown key '{key}.{k}'; valid keys here: {', '.join(valid)}")
            if k == "device" and not (isinstance(v, str) and device.match(v)):
                raise ParamsError(f"{origin}: '{key}.device' must be cpu, cuda, cuda:<n> or mps, got {v!r}")
            if k != "device" and (isinstance(v, str) or v <= 0):
                raise ParamsError(f"{origin}: '{key}.{k}' must be a positive number (ms / MB), got {v!r}")
        if "device" not in spec:
            raise ParamsError(f"{origin}: '{key}' needs a device (cpu, cuda, cuda:<n>, mps)")


def from_dict(overrides: dict | None, name: str = "default", origin: str = "<dict>") -> Params:
    """Defaults with ``overrides`` applied and validated."""
    overrides = dict(overrides or {})
    P = _merge(Params(), overrides, "", origin)
    P = dataclasses.replace(P, name=overrides.get("name", name), source=origin)
    _check_values(P, origin)
    return P


def load(path: str | Path) -> Params:
    """Read a parameter set; its file stem names the run unless it sets ``name``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections ({', '.join(SECTIONS)})")
    return from_dict(raw, name=path.stem, origin=str(path.resolve()))

"""Every parameter value checked against what can use it, before any work: the second half of validation.

``ptmrec.params`` checks keys and types while reading a parameter set (no heavy import); this module checks
every value that names a registered thing (an extractor, an encoder, a scorer, a dataset, a family) or one
of a fixed set (a loss, a token kind, a scheduler) against the registries themselves, so that a typo fails
in seconds, naming the key, the value and the valid ones, not hours into a run. ``ptmrec params`` and
``run_all.sh`` call it; nothing imports this module but the driver and the command line, so its imports of
every registry make no cycle.
"""
from __future__ import annotations

from .params import Params, ParamsError


def choices(P: Params) -> dict[str, tuple[list[str], list[str]]]:
    """Every parameter that names a registered thing or one of a fixed set: key -> (values set, valid values).

    Imports the registries (torch and all): ``check_choices`` runs once per run or ``ptmrec params``, never at import.
    """
    from . import autoencoder, data, encoders, evaluate, extract, groundtruth, nets, ranker, tokens, train, transferability

    datasets = data.list_datasets() + sorted(P.data.image_folders) + sorted(P.data.hf_datasets)
    r = P.ranker
    return {
        "ranker.architecture": ([r.architecture], sorted(ranker.ARCHITECTURES)),
        "ranker.loss": ([r.loss], list(ranker.LOSSES)),
        "ranker.model_tokens": ([r.model_tokens], list(ranker.MODEL_TOKENS)),
        "ranker.candidate_attention": ([r.candidate_attention], list(ranker.CANDIDATE_ATTENTION)),
        "tokens.kind": ([P.tokens.kind], list(tokens.KINDS)),
        "groundtruth.methods": (list(P.groundtruth.methods), list(groundtruth.METHODS)),
        "train_autoencoder.scheduler": ([P.train_autoencoder.scheduler], list(train.SCHEDULERS)),
        "train_ranker.scheduler": ([P.train_ranker.scheduler], list(train.SCHEDULERS)),
        "extract.extractor": ([P.extract.extractor], extract.list_extractors()),
        "encoder.name": ([P.encoder.name], encoders.list_encoders()),
        "evaluate.ablations": (list(P.evaluate.ablations), sorted(evaluate.ABLATIONS)),
        "evaluate.inner_grid.loss": ([str(v) for v in P.evaluate.inner_grid.get("loss", [])], list(ranker.LOSSES)),
        "autoencoder.activation": ([P.autoencoder.activation], sorted(autoencoder.ACTIVATIONS)),
        "autoencoder.reconstruction_loss": ([P.autoencoder.reconstruction_loss], sorted(autoencoder.LOSSES)),
        "baselines.scorers": (list(P.baselines.scorers), transferability.list_scorers()),
        "ranker.evidence": (list(r.evidence), list(P.baselines.scorers)),  # after the scorers they must be among
        "zoo.families": (list(P.zoo.families), nets.list_families()),
        "tasks.datasets": (list(P.tasks.datasets), datasets),
        "zoo.sources": (list(P.zoo.sources), datasets),
        "extract.probe_datasets": (list(P.extract.probe_datasets), datasets),
    }


def check_choices(P: Params) -> None:
    """Raise ParamsError for the first value that is not among its valid ones, naming key, value and choices."""
    for key, (values, valid) in choices(P).items():
        bad = [v for v in values if v not in valid]
        if bad:
            raise ParamsError(f"{P.source or P.name}: '{key}' has {bad[0]!r}, which is not valid; valid: "
                              f"{', '.join(map(str, valid))}")

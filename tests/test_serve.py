"""ptmrec.serve: the ONNX exports of the ranker and the image tower give the scores and embeddings of the eager
torch modules, for every ranker architecture, and refuse files they were not written with."""
import json

import numpy as np
import pytest
import torch

from ptmrec import ranker as R
from ptmrec import serve as S

MAX_TOKENS = 10


def tiny_ranker(arch: str, attention: str, model_tokens: str, dataset_tokens: bool = True):
    torch.manual_seed(0)
    cfg = R.RankerConfig(arch, model_dim=16, dataset_dim=8, n_models=9, d_model=16, heads=2, layers=1, dropout=0.1,
                         model_tokens=model_tokens, candidate_attention=attention, inducing=4,
                         dataset_tokens=dataset_tokens, max_dataset_tokens=MAX_TOKENS)
    return R.build_ranker(cfg)


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("arch", list(R.ARCHITECTURES))
@pytest.mark.parametrize("attention", list(R.CANDIDATE_ATTENTION))
@pytest.mark.parametrize("model_tokens", ["autoencoder", "ids"])
def test_onnx_ranker_scores_as_the_eager_ranker_for_any_token_count(arch, attention, model_tokens, tmp_path):
    """Padding to the graph's length and masking (True = padding) must give the scores of the unpadded tokens:
    a flipped mask, padding that leaks, or a length baked in at export would each differ here."""
    model = tiny_ranker(arch, attention, model_tokens).eval()
    tokens = unit(9, 16, 0)  # [N, D_m]
    ids = [f"m{i}" for i in range(9)]
    R.save_ranker(model, tmp_path, {"model_ids": ids, "max_dataset_tokens": MAX_TOKENS}, model_tokens=tokens)
    onnx = S.OnnxRanker(tmp_path)
    assert onnx.length == MAX_TOKENS and onnx.model_ids == ids
    for m in (1, 4, MAX_TOKENS):
        dataset = unit(m, 8, m)  # [M, D_d]
        with torch.no_grad():
            want = model(torch.from_numpy(tokens)[None], torch.from_numpy(dataset)[None], None,
                         torch.arange(9)[None])[0].numpy()
        np.testing.assert_allclose(onnx.scores(dataset), want, atol=2e-5)
    with pytest.raises(ValueError, match="1..10 dataset tokens"):
        onnx.scores(unit(MAX_TOKENS + 1, 8, 0))


def test_a_ranker_without_dataset_tokens_exports_a_graph_without_inputs(tmp_path):
    model = tiny_ranker("cross_attention", "full", "autoencoder", dataset_tokens=False).eval()
    tokens = unit(9, 16, 0)
    R.save_ranker(model, tmp_path, {"model_ids": list("abcdefghi"), "max_dataset_tokens": MAX_TOKENS},
                  model_tokens=tokens)
    onnx = S.OnnxRanker(tmp_path)
    assert onnx.length is None
    with torch.no_grad():
        want = model(torch.from_numpy(tokens)[None], torch.zeros(1, 3, 8))[0].numpy()
    np.testing.assert_allclose(onnx.scores(unit(3, 8, 1)), want, atol=2e-5)


def test_saving_keeps_the_modules_modes_and_refuses_changed_or_stale_files(tmp_path):
    """The exporter sets modes of its own: a ranker saved in the middle of training must stay in training
    mode, and an evaluated one in eval mode. A changed graph or one saved without tokens is not run."""
    model = tiny_ranker("cross_attention", "induced", "autoencoder").train()
    S.export_ranker(model, unit(9, 16, 0), MAX_TOKENS, tmp_path)
    assert all(m.training for m in model.modules())
    S.export_ranker(model.eval(), unit(9, 16, 0), MAX_TOKENS, tmp_path)
    assert not any(m.training for m in model.modules())
    extra = {"model_ids": list("abcdefghi"), "max_dataset_tokens": MAX_TOKENS}
    R.save_ranker(model, tmp_path, extra, model_tokens=unit(9, 16, 0))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["onnx"]["file"] == S.RANKER_ONNX and cfg["onnx"]["max_abs_diff"] < 1e-4
    with open(tmp_path / S.RANKER_ONNX, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        S.OnnxRanker(tmp_path)
    R.save_ranker(model, tmp_path, extra, model_tokens=unit(9, 16, 0))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "max_dataset_tokens": MAX_TOKENS + 5}))
    with pytest.raises(ValueError, match="exported for 10 dataset tokens"):
        S.OnnxRanker(tmp_path)  # a config edited after the export would cut more tokens than the graph takes
    R.save_ranker(model, tmp_path, extra)  # new weights, no tokens: the old graph must not stay beside them
    assert not (tmp_path / S.RANKER_ONNX).exists()
    with pytest.raises(FileNotFoundError, match="no ONNX ranker"):
        S.OnnxRanker(tmp_path)


def test_a_graph_that_differs_from_the_module_is_not_written(tmp_path):
    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    training = Doubler().train()
    with pytest.raises(ValueError, match="differs from the eager module"):
        S.export_onnx(training, (torch.ones(2, 3),), tmp_path / "d.onnx", ["x"], ["y"], None, lambda sess: 1.0)
    assert not list(tmp_path.iterdir()) and training.training  # nothing written, the mode it had
    err = S.export_onnx(Doubler(), (torch.ones(2, 3),), tmp_path / "d.onnx", ["x"], ["y"], {"x": {0: "b"}, "y": {0: "b"}},
                        lambda sess: float(np.abs(S.run_session(sess, {"x": np.ones((5, 3), np.float32)}) - 2).max()))
    assert err == 0.0 and (tmp_path / "d.onnx").is_file()

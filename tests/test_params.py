"""Parameter sets: defaults, overrides, and errors that name the key before any work starts."""
import subprocess
import sys
from pathlib import Path

import pytest

from ptmrec import params
from ptmrec.paths import REPO


@pytest.mark.parametrize("path", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_parameter_set_is_valid(path):
    P = params.load(path)
    assert P.name == path.stem
    assert P.groundtruth.target_method in P.groundtruth.methods


def test_overrides_only_change_what_they_name():
    P = params.from_dict({"zoo": {"epochs": 7}, "tasks": {"datasets": {"fmnist": 3}}})
    D = params.Params()
    assert P.zoo.epochs == 7 and P.zoo.families == D.zoo.families
    assert P.tasks.datasets == {"fmnist": 3}
    assert P.groundtruth == D.groundtruth


def test_int_is_accepted_for_float():
    assert params.from_dict({"zoo": {"lr": 1}}).zoo.lr == 1.0


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    return f


def test_misspelt_key_names_the_key_and_the_valid_ones(tmp_path):
    f = _write(tmp_path, "zoo:\n  epoch: 3\n")
    with pytest.raises(params.ParamsError) as e:
        params.load(f)
    msg = str(e.value)
    assert "zoo.epoch" in msg and "epochs" in msg and "bad.yaml" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(params.ParamsError, match="unknown key 'zooo'.*zoo"):
        params.load(_write(tmp_path, "zooo: {}\n"))


@pytest.mark.parametrize("text, key", [
    ("zoo:\n  epochs: three\n", "zoo.epochs"),
    ("zoo:\n  epochs: 2.5\n", "zoo.epochs"),
    ("zoo:\n  families: resnet\n", "zoo.families"),
    ("tasks:\n  datasets: {fmnist: many}\n", "tasks.datasets"),
    ("run:\n  seed: true\n", "run.seed"),
    ("run: 3\n", "run"),
])
def test_wrong_type_names_the_key(tmp_path, text, key):
    with pytest.raises(params.ParamsError, match=f"'{key}'"):
        params.load(_write(tmp_path, text))


def test_bad_values_and_files(tmp_path):
    with pytest.raises(params.ParamsError, match="target_method"):
        params.from_dict({"groundtruth": {"methods": ["finetune"]}})
    with pytest.raises(params.ParamsError, match="not found"):
        params.load(tmp_path / "missing.yaml")
    with pytest.raises(params.ParamsError, match="not valid YAML"):
        params.load(_write(tmp_path, "zoo: [\n"))


def test_cli_rejects_a_bad_set_before_any_work(tmp_path):
    f = _write(tmp_path, "groundtruth:\n  probe_step: 3\n")
    r = subprocess.run([sys.executable, "-m", "ptmrec.cli", "run", str(f)], capture_output=True, text=True,
                       env={"PTMREC_RUNS": str(tmp_path / "runs"), "PATH": ""})
    assert r.returncode == 2
    assert "groundtruth.probe_step" in r.stderr and "probe_steps" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_section_hash_is_stable_and_sensitive():
    a, b = params.Params(), params.from_dict({"zoo": {"epochs": 9}})
    assert a.section_hash("zoo") == params.Params().section_hash("zoo")
    assert a.section_hash("zoo") != b.section_hash("zoo")
    assert a.section_hash("tasks") == b.section_hash("tasks")


@pytest.mark.parametrize("section, key, value", [
    ("ranker", "loss", "hinge"), ("tokens", "kind", "patches"), ("train_ranker", "scheduler", "step"),
    ("extract", "extractor", "histogram"), ("encoder", "name", "clip-large"), ("baselines", "scorers", ["logme", "nope"]),
    ("tasks", "datasets", {"not-a-dataset": 2}), ("evaluate", "ablations", ["no_brain"]),
    ("groundtruth", "methods", ["linear_probe", "knn_probe"]), ("ranker", "candidate_attention", "sparse"),
    ("ranker", "model_tokens", "pixels"),
])
def test_every_choice_is_checked_before_any_work(section, key, value):
    from ptmrec.checks import check_choices
    from ptmrec.params import ParamsError, from_dict

    P = from_dict({section: {key: value}})  # types are fine: only the registries know the value is wrong
    with pytest.raises(ParamsError, match=rf"'{section}\.{key}' has .*not valid; valid: "):
        check_choices(P)


def test_run_all_refuses_an_unknown_choice_before_any_stage(tmp_path):
    import os

    bad = tmp_path / "bad.yaml"
    bad.write_text("ranker:\n  loss: hinge\n")
    r = subprocess.run([str(REPO / "run_all.sh"), str(bad)], capture_output=True, text=True,
                       env={**os.environ, "PTMREC_RUNS": str(tmp_path / "runs")}, timeout=600)
    assert r.returncode != 0 and "'ranker.loss' has 'hinge'" in r.stderr + r.stdout
    assert not (tmp_path / "runs" / "bad" / "00_zoo_and_tasks").exists()


def test_ptmrec_params_names_a_bad_value(tmp_path, capsys):
    from ptmrec.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens:\n  kind: patches\n")
    assert main(["params", str(bad)]) == 2
    assert "'tokens.kind' has 'patches', which is not valid; valid: images, prototypes" in capsys.readouterr().err

"""The HTML report of a run, its figures (fixed sizes for a LaTeX page) and the Quarto project's embeds."""
import html
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ptmrec import plots, report
from ptmrec.paths import REPO

pytestmark = pytest.mark.slow


def _run(smoke_runs: Path) -> Path:
    return smoke_runs / "smoke"


def test_pipeline_writes_the_html_report(smoke_runs):
    run = _run(smoke_runs)
    out = run / "report"
    index = (out / "index.html").read_text()
    notebooks = report.stage_notebooks(run)
    assert notebooks, "the smoke run has no executed notebooks"
    for stage, nb in notebooks:
        page = out / f"{stage}.html"
        assert page.stat().st_size > 10_000, f"{page} is not a converted notebook"
        assert f'href="{stage}.html"' in index
        assert report.notebook_failed(nb) is None
        for fig in report.notebook_figures(nb, stage):
            assert fig.has_output, f"{stage}: cell {fig.label} shows no image"
            for ext in report.FIGURE_EXTS:
                assert (out / "figures" / stage / f"{fig.name}{ext}").is_file(), f"{stage}: {fig.name}{ext} not gathered"
            assert f'id="{fig.label}"' in index and fig.caption and html.escape(fig.caption) in index
    # every figure file of every stage is gathered, labelled or not
    for stage, files in report.figure_files(run).items():
        for f in files:
            assert (out / "figures" / stage / f.name).read_bytes() == f.read_bytes()


def test_report_reconverts_only_changed_notebooks(smoke_runs, tmp_path):
    run = tmp_path / "smoke"
    shutil.copytree(_run(smoke_runs) / "notebooks", run / "notebooks")
    for stage, _ in report.stage_notebooks(run):
        src = _run(smoke_runs) / stage
        for name in ("figures", "metrics.json", "_stage.json"):
            if (src / name).is_dir():
                shutil.copytree(src / name, run / stage / name)
            elif (src / name).exists():
                shutil.copy2(src / name, run / stage / name)
    report.write_html_report(run)
    stage, nb = report.stage_notebooks(run)[0]
    page = run / "report" / f"{stage}.html"
    first = page.stat().st_mtime_ns
    time.sleep(0.05)
    report.write_html_report(run)
    assert page.stat().st_mtime_ns == first, "an unchanged notebook was converted again"
    os.utime(nb)  # the notebook is newer than its HTML now
    report.write_html_report(run)
    assert page.stat().st_mtime_ns > first


def test_a_failed_notebook_is_marked_in_the_report(smoke_runs, tmp_path):
    run = tmp_path / "smoke"
    stage, nb = report.stage_notebooks(_run(smoke_runs))[-1]
    data = json.loads(nb.read_text())
    code = next(c for c in data["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "error", "ename": "FileNotFoundError", "evalue": "no performance.csv",
                        "traceback": []}]
    (run / "notebooks").mkdir(parents=True)
    (run / "notebooks" / nb.name).write_text(json.dumps(data))
    index = report.write_html_report(run).read_text()
    assert "failed: FileNotFoundError: no performance.csv" in index


def test_figures_have_a_fixed_size_for_a_latex_page(smoke_runs):
    """Every saved figure keeps the size it was made with: plots.WIDTH_IN (the thesis text width) or narrower,
    never grown by a tight bounding box, and no taller than a page; the PDF and the PNG (200 dpi) agree."""
    files = [f for fs in report.figure_files(_run(smoke_runs)).values() for f in fs]
    assert files
    full = 0
    for f in files:
        w, h = report.figure_size_in(f)
        assert 1.0 <= w <= plots.WIDTH_IN + 0.01, f"{f}: {w:.2f} in wide; the text is {plots.WIDTH_IN} in"
        assert 0.5 < h <= 9.0, f"{f}: {h:.2f} in high does not fit a page"
        twin = f.with_suffix(".png" if f.suffix == ".pdf" else ".pdf")
        if twin.exists():
            assert np.allclose(report.figure_size_in(twin), (w, h), atol=0.02), f"{f} and {twin.name} differ in size"
        full += abs(w - plots.WIDTH_IN) < 0.01
    assert full >= len(files) // 2, "most figures should span the text width"


def test_cell_options_and_figure_names(tmp_path):
    src = '#| label: fig-token-map\n#| fig-cap: "Tokens: a map."\nfig = 1\nplots.save(fig, OUT, "token_map");\n'
    assert report.cell_options(src) == {"label": "fig-token-map", "fig-cap": "Tokens: a map."}
    nb = {"cells": [{"cell_type": "code", "source": src, "outputs": []},
                    {"cell_type": "code", "source": '#| label: fig-loss\nImage(OUT / "figures" / "ae_loss.png")',
                     "outputs": [{"output_type": "display_data", "data": {"image/png": "..."}}]},
                    {"cell_type": "code", "source": "#| label: tbl-x\nx", "outputs": []}]}
    path = tmp_path / "03_x.ipynb"
    path.write_text(json.dumps(nb))
    figs = report.notebook_figures(path)
    assert [(f.label, f.name, f.has_output) for f in figs] == [("fig-token-map", "token_map", False),
                                                              ("fig-loss", "ae_loss", True)]


def test_every_quarto_embed_target_exists_in_the_executed_notebooks(smoke_runs):
    qmds = sorted((REPO / "reports").glob("*.qmd"))
    targets = [t for q in qmds if not q.name.startswith("figures") for t in report.embed_targets(q)]
    assert len(targets) >= 5, "the hand-written Quarto pages embed almost nothing"
    hand_written = REPO / "reports"
    problems = [p for p in report.check_embeds(hand_written, _run(smoke_runs)) if not p.startswith("figures")]
    assert problems == []


def test_check_embeds_names_a_missing_label(smoke_runs, tmp_path):
    (tmp_path / "a.qmd").write_text("x\n{{< embed notebooks/03_autoencoder.ipynb#fig-nope >}}\n"
                                    "{{< embed notebooks/99_none.ipynb#fig-x >}}\n")
    problems = report.check_embeds(tmp_path, _run(smoke_runs))
    assert problems == ["a.qmd:2: notebooks/03_autoencoder.ipynb has no cell labelled fig-nope",
                        f"a.qmd:3: notebook notebooks/99_none.ipynb is not an executed notebook of {_run(smoke_runs)}"]


def test_prepare_quarto_copies_notebooks_and_embeds_every_figure(smoke_runs, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(REPO / "reports", reports, ignore=shutil.ignore_patterns("notebooks", "_output", ".quarto"))
    copies = report.prepare_quarto(_run(smoke_runs), reports)
    assert {c.name for c in copies} == {nb.name for _, nb in report.stage_notebooks(_run(smoke_runs))}
    embedded = {(Path(nb).name, label) for q in reports.glob("figures-*.qmd") for nb, label, _ in report.embed_targets(q)}
    expected = {(nb.name, f.label) for s, nb in report.stage_notebooks(_run(smoke_runs))
                for f in report.notebook_figures(nb, s)}
    assert embedded == expected
    for q in reports.glob("figures-*.qmd"):  # one notebook per page: no label twice on a page
        labels = [label for _, label, _ in report.embed_targets(q)]
        assert len({nb for nb, _, _ in report.embed_targets(q)}) == 1 and len(labels) == len(set(labels))
        assert f"({q.name})" in (reports / "figures.qmd").read_text()
    assert report.check_embeds(reports, _run(smoke_runs)) == []


def test_report_command(smoke_runs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "ptmrec.cli", "report", "--run", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no such run folder" in r.stderr
    reports = tmp_path / "reports"
    shutil.copytree(REPO / "reports", reports, ignore=shutil.ignore_patterns("notebooks", "_output", ".quarto"))
    r = subprocess.run([sys.executable, "-m", "ptmrec.cli", "report", "--run", str(_run(smoke_runs)),
                        "--reports", str(reports)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert (reports / "figures.qmd").exists() and any(reports.glob("figures-*.qmd"))
    assert any((reports / "notebooks").glob("*.ipynb"))


@pytest.mark.skipif(shutil.which("quarto") is None, reason="Quarto is not installed (it cannot be, on these machines)")
def test_quarto_renders_the_report(smoke_runs, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(REPO / "reports", reports, ignore=shutil.ignore_patterns("notebooks", "_output", ".quarto"))
    report.prepare_quarto(_run(smoke_runs), reports)
    for fmt, ext in (("html", ".html"), ("pdf", ".pdf")):
        r = subprocess.run(["quarto", "render", str(reports), "--to", fmt], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        for qmd in reports.glob("*.qmd"):
            assert (reports / "_output" / (qmd.stem + ext)).exists(), f"quarto wrote no {qmd.stem}{ext}"

"""The LaTeX thesis: its generated inputs come from a named run; a missing one is an error; it builds."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ptmrec import pipeline, report
from ptmrec.paths import REPO

THESIS = REPO / "thesis"


def _sources(dst: Path) -> Path:
    """A copy of the thesis sources (no generated files, no LaTeX outputs)."""
    shutil.copytree(THESIS, dst, ignore=shutil.ignore_patterns("generated", "*.aux", "*.log", "*.pdf", "*.bbl",
                                                               "*.blg", "*.fls", "*.fdb_latexmk", "*.out", "*.toc"))
    return dst


def _bib_entries() -> dict[str, str]:
    text = (THESIS / "refs.bib").read_text()
    return {m.group(2): m.group(0) for m in re.finditer(r"@(\w+)\{([^,]+),(.*?)\n\}", text, re.S)}


def test_every_citation_is_in_the_bibliography_and_complete():
    entries = _bib_entries()
    cited = set()
    for tex in THESIS.rglob("*.tex"):
        for m in re.finditer(r"\\cite[tp]?\*?(?:\[[^]]*\])?\{([^}]+)\}", tex.read_text()):
            cited |= {k.strip() for k in m.group(1).split(",")}
    assert cited, "the thesis cites nothing"
    assert cited <= set(entries), f"cited but not in refs.bib: {sorted(cited - set(entries))}"
    for key, entry in entries.items():
        for field in ("author", "title", "year"):
            assert re.search(rf"\b{field}\s*=", entry), f"{key} has no {field}"
        assert re.search(r"\b(booktitle|journal|howpublished)\s*=", entry), f"{key} names no venue"
    anchors = {"zhang2023modelspider", "meng2023emms", "you2021logme", "shao2022sfda", "liu2025ptmpicker",
               "nguyen2020leep", "li2021ranking", "tran2019transferability", "bao2019hscore", "ibrahim2022newer",
               "pandy2022gbc", "huang2022transrate", "bolya2021parc", "radford2021clip", "ilharco2021openclip",
               "vigna2015weighted", "cao2007listnet", "xia2008listmle", "tan2019efficientnet", "reimers2019sbert",
               "wang2020minilm", "xiao2017fashionmnist", "lecun1998mnist"}
    assert anchors <= cited, f"anchors not cited: {sorted(anchors - cited)}"


def test_references_name_stages_or_tables():
    refs = report.thesis_references(THESIS)
    assert "run.tex" in refs and any(r.startswith("tables/") for r in refs)
    figures = [r for r in refs if r.endswith(".pdf")]
    assert len(figures) >= 5
    for rel in refs:
        head, _, rest = rel.partition("/")
        if rel == "run.tex":
            continue
        if head == "tables":
            assert Path(rest).stem in report.TABLES, f"{rel}: no such table in ptmrec.report"
        else:
            assert head in pipeline.STAGES, f"{rel}: {head} is not a stage"


def test_a_missing_figure_or_table_is_an_error_naming_it(tmp_path):
    """A fake run with one of the two files a chapter needs: the other is named, with its .tex line and stage."""
    run = tmp_path / "runs" / "mini"
    (run / "03_autoencoder" / "figures").mkdir(parents=True)
    (run / "03_autoencoder" / "figures" / "token_map.pdf").write_bytes(b"%PDF-1.4\n")
    _notebook(run, "03_autoencoder", token_map="fig-token-map")
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "main.tex").write_text("\\input{generated/run.tex}\n\\include{chapters/x}\n")
    (thesis / "chapters" / "x.tex").write_text(
        "\\includegraphics{generated/03_autoencoder/figures/token_map.pdf}\n"
        "% \\includegraphics{generated/03_autoencoder/figures/commented_out.pdf}\n"
        "\\includegraphics{generated/03_autoencoder/figures/no_such_figure.pdf}\n"
        "\\input{generated/07_evaluate/tables/main.tex}\n"
        "\\input{generated/tables/groundtruth}\n")
    with pytest.raises(report.ReportError) as e:
        report.thesis_assets(run, thesis)
    msg = str(e.value)
    assert "generated/03_autoencoder/figures/no_such_figure.pdf (needed by chapters/x.tex:3)" in msg
    assert "stage 03_autoencoder (notebooks/03_autoencoder.ipynb) should have made it" in msg
    assert "generated/07_evaluate/tables/main.tex (needed by chapters/x.tex:4)" in msg
    assert "generated/tables/groundtruth.tex (needed by chapters/x.tex:5)" in msg and "01_groundtruth" in msg
    assert "commented_out" not in msg and "token_map" not in msg
    r = subprocess.run([sys.executable, "-m", "ptmrec.cli", "thesis", "--run", str(run), "--thesis", str(thesis)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "no_such_figure.pdf" in r.stderr


def _notebook(run: Path, stage: str, **figures: str) -> None:
    """An executed notebook of ``stage`` in ``run`` with one labelled figure cell per name=label."""
    cells = [{"cell_type": "code", "source": f'#| label: {label}\n#| fig-cap: "{name}."\nplots.save(fig, OUT, "{name}")',
              "outputs": []} for name, label in figures.items()]
    (run / "notebooks").mkdir(parents=True, exist_ok=True)
    (run / "notebooks" / f"{stage}.ipynb").write_text(json.dumps({"cells": cells}))


def test_a_thesis_figure_that_no_labelled_cell_makes_is_an_error(tmp_path):
    """One figure, one source: the thesis includes only figures of labelled notebook cells (what Quarto embeds)."""
    run = tmp_path / "runs" / "mini"
    (run / "03_autoencoder" / "figures").mkdir(parents=True)
    for name in ("token_map", "side_plot"):
        (run / "03_autoencoder" / "figures" / f"{name}.pdf").write_bytes(b"%PDF-1.4\n")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "main.tex").write_text("\\includegraphics{generated/03_autoencoder/figures/token_map.pdf}\n"
                                     "\\includegraphics{generated/03_autoencoder/figures/side_plot.pdf}\n")
    with pytest.raises(report.ReportError, match="notebooks/03_autoencoder.ipynb does not exist: stage 03_autoencoder"):
        report.thesis_assets(run, thesis)
    _notebook(run, "03_autoencoder", token_map="fig-token-map")
    with pytest.raises(report.ReportError) as e:
        report.thesis_assets(run, thesis)
    msg = str(e.value)
    assert "generated/03_autoencoder/figures/side_plot.pdf (needed by main.tex:2)" in msg
    assert "not made by a labelled figure cell of notebooks/03_autoencoder.ipynb" in msg and "fig-token-map" in msg
    assert "token_map.pdf (needed" not in msg


@pytest.mark.slow
def test_thesis_figures_are_the_figures_the_quarto_pages_embed(smoke_runs):
    """Every figure the thesis includes is a labelled cell of the run's notebook that a Quarto page embeds."""
    run = smoke_runs / "smoke"
    embedded = {(Path(nb).stem, label) for q in report.hand_written_pages(REPO / "reports")
                for nb, label, _ in report.embed_targets(q)}
    figures = report.thesis_figures(THESIS)
    assert len(figures) >= 5
    for rel, (stage, name) in figures.items():
        fig = report.figure_cell(run, stage, name)  # raises naming the notebook when no labelled cell makes it
        assert (stage, fig.label) in embedded, (f"the thesis includes {rel} (cell {fig.label} of notebooks/{stage}"
                                                ".ipynb), which no hand-written Quarto page embeds")


@pytest.mark.slow
def test_thesis_command_says_which_run(smoke_runs, tmp_path):
    thesis = _sources(tmp_path / "thesis")
    run = smoke_runs / "smoke"
    r = subprocess.run([sys.executable, "-m", "ptmrec.cli", "thesis", "--run", str(run), "--thesis", str(thesis),
                        "--assets-only"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"figures and tables from run {run.resolve()} (last stage finished " in r.stdout
    assert "\\newcommand{\\ptmrecRun}{smoke}" in (thesis / "generated" / "run.tex").read_text()


@pytest.mark.slow
def test_generated_tables_of_the_smoke_run(smoke_runs):
    run = smoke_runs / "smoke"
    for name in report.list_tables():
        tex = report.TABLES[name](run)
        assert tex.startswith("\\begin{tabular}") and "\\bottomrule" in tex, name
        assert "_" not in tex.replace("\\_", ""), f"{name}: unescaped underscore"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk / TeX Live not installed (apt.txt installs them)")
def test_thesis_builds_from_the_smoke_run(smoke_runs, tmp_path):
    thesis = _sources(tmp_path / "thesis")
    pdf = report.build_thesis(smoke_runs / "smoke", thesis)
    assert pdf.stat().st_size > 50_000
    log = (thesis / "main.log").read_text(errors="replace")
    assert "undefined" not in log.lower().replace("undefined control sequence", "!!"), "undefined citation or reference"
    assert not re.search(r"File `[^']+' not found", log)
    blg = (thesis / "main.blg").read_text()
    assert "Warning--" not in blg, blg
    figures = [r for r in report.thesis_references(thesis) if r.endswith(".pdf")]
    assert all((thesis / "generated" / f).exists() for f in figures)

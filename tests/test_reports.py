"""The HTML report of a run, its figures (fixed sizes for a LaTeX page) and the Quarto project's embeds."""
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
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
    assert len(problems) == 2
    assert problems[0].startswith("a.qmd:2: notebooks/03_autoencoder.ipynb has no cell labelled fig-nope (its labels: ")
    assert "fig-token-map" in problems[0]
    assert problems[1].startswith(f"a.qmd:3: notebook notebooks/99_none.ipynb is not an executed notebook of "
                                  f"{_run(smoke_runs)} (no stage is called 99_none")


def test_a_notebook_missing_from_the_run_is_named_with_its_stage(smoke_runs, tmp_path):
    """A run without the executed notebook of stage 07: each page that embeds it names the notebook and the stage."""
    run = tmp_path / "smoke"
    (run / "notebooks").mkdir(parents=True)
    for _, nb in report.stage_notebooks(_run(smoke_runs)):
        if nb.stem != "07_evaluate":
            shutil.copy2(nb, run / "notebooks" / nb.name)
    problems = report.check_embeds(REPO / "reports", run)
    assert problems and all("notebooks/07_evaluate.ipynb is not an executed notebook" in p and
                            "stage 07_evaluate makes it: ./run_all.sh params/smoke.yaml --from 07_evaluate" in p
                            for p in problems), problems
    if report.find_quarto():
        with pytest.raises(report.ReportError, match="notebooks/07_evaluate.ipynb is not an executed notebook"):
            report.render_quarto(run, REPO / "reports", tmp_path / "quarto", formats=("html",))


def test_a_figure_cell_without_a_label_is_listed(tmp_path):
    """A cell that shows an image but has no #| label: fig-... is listed in figures.qmd and the HTML report."""
    run = tmp_path / "runs" / "mini"
    cells = [{"cell_type": "code", "source": '#| label: fig-a\n#| fig-cap: "A."\nplots.save(fig, OUT, "a")',
              "outputs": [{"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}}]},
             {"cell_type": "code", "source": "# the loss, unlabelled\nplt.plot(loss)",
              "outputs": [{"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}}]},
             {"cell_type": "code", "source": "print(1)", "outputs": [{"output_type": "stream", "text": "1"}]}]
    (run / "notebooks").mkdir(parents=True)
    (run / "notebooks" / "03_autoencoder.ipynb").write_text(json.dumps({"cells": cells}))
    assert report.unlabelled_figures(run / "notebooks" / "03_autoencoder.ipynb") == [
        "03_autoencoder: cell 1 (# the loss, unlabelled)"]
    reports = tmp_path / "reports"
    report.prepare_quarto(run, reports)
    assert "03_autoencoder: cell 1 (# the loss, unlabelled)" in (reports / "figures.qmd").read_text()
    assert "fig-a" in (reports / "figures-03_autoencoder.qmd").read_text()
    index = report.write_html_report(run).read_text()
    assert "03_autoencoder: cell 1 (# the loss, unlabelled)" in index


def test_quarto_absent_is_one_plain_sentence(smoke_runs, monkeypatch, capsys):
    with pytest.raises(report.QuartoMissing) as e:
        report.render_quarto(_run(smoke_runs), quarto="no-such-quarto")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("Quarto is not installed") and "quarto.org" in msg
    # the command: one line on stderr, no stack trace; the end of a pipeline run says it once and goes on
    from ptmrec import cli, pipeline

    monkeypatch.setattr(report, "find_quarto", lambda quarto="quarto": None)
    assert cli.main(["report", "--run", str(_run(smoke_runs)), "--render"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Quarto is not installed" in err and "Traceback" not in err
    report.write_run_reports(_run(smoke_runs), pipeline.list_stages())
    out = capsys.readouterr()
    assert out.out.count("Quarto is not installed") == 1 and "Traceback" not in out.out + out.err
    assert "report: " in out.out  # the HTML report is still written


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


def test_a_run_renders_figure_pages_only_for_figures_no_page_embeds(smoke_runs, tmp_path):
    """A labelled figure no hand-written page embeds (a notebook gained it) still reaches the rendered report."""
    reports = tmp_path / "reports"
    shutil.copytree(REPO / "reports", reports, ignore=shutil.ignore_patterns("notebooks", "_output", ".quarto"))
    page = reports / "representations.qmd"
    page.write_text(page.read_text().replace("{{< embed notebooks/03_autoencoder.ipynb#fig-token-map >}}", ""))
    report.prepare_quarto(_run(smoke_runs), reports, only_unembedded=True)
    generated = {(Path(nb).name, label) for q in reports.glob("figures-*.qmd") for nb, label, _ in report.embed_targets(q)}
    everything = {(nb.name, f.label) for s, nb in report.stage_notebooks(_run(smoke_runs))
                  for f in report.notebook_figures(nb, s)}
    on_pages = {(Path(nb).name, label) for q in report.hand_written_pages(reports) for nb, label, _ in report.embed_targets(q)}
    assert ("03_autoencoder.ipynb", "fig-token-map") in generated
    assert generated == everything - on_pages
    assert "(figures-03_autoencoder.qmd)" in (reports / "figures.qmd").read_text()


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


# ------------------------------------------------------------------------ Quarto render, Chromium

QUARTO = report.find_quarto()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_quarto = pytest.mark.skipif(QUARTO is None, reason="Quarto is not installed (quarto.org, conda-forge quarto)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt.txt: chromium)")
BUDGET_S = {"html": 30, "pdf": 60}  # the goals on the 2-core VM; asserted with slack for a busy machine


def _words(text: str) -> str:
    return " ".join(text.replace("\u00ad", "").split())


def _letters(text: str) -> str:
    """Only the letters and digits of a text (HTML entities, ligatures, smart quotes and hyphenation undone)."""
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", html.unescape(text))).lower()


@pytest.fixture(scope="module")
def quarto_render(smoke_runs, tmp_path_factory):
    """The smoke run's Quarto project rendered to HTML and PDF once: (folder, seconds per format, CPU seconds)."""
    if QUARTO is None:
        pytest.skip("Quarto is not installed")
    dest = tmp_path_factory.mktemp("quarto")
    t0 = os.times()
    seconds = report.render_quarto(_run(smoke_runs), REPO / "reports", dest, force=True)
    t1 = os.times()
    cpu = round((t1.children_user + t1.children_system) - (t0.children_user + t0.children_system), 1)
    (smoke_runs / "quarto_seconds.json").write_text(json.dumps({**seconds, "cpu_all": cpu}) + "\n")
    print(f"quarto render of the smoke project: {seconds} (CPU {cpu} s)")
    return dest, seconds


def _pages_and_targets() -> list[tuple[Path, list[tuple[str, str, int]]]]:
    """Each hand-written page with the embed targets written in it: what the render must show."""
    pages = [(q, report.embed_targets(q)) for q in report.hand_written_pages(REPO / "reports")]
    assert sum(len(t) for _, t in pages) >= 20, "the hand-written Quarto pages embed almost nothing"
    return pages


def test_the_pages_cover_every_stage(smoke_runs):
    """Every stage with labelled figures is embedded by a hand-written page, and has its metrics table included."""
    embedded = {Path(nb).stem for _, targets in _pages_and_targets() for nb, _, _ in targets}
    text = "\n".join(q.read_text() for q in report.hand_written_pages(REPO / "reports"))
    for stage, nb in report.stage_notebooks(_run(smoke_runs)):
        if report.notebook_figures(nb, stage):
            assert stage in embedded, f"no hand-written Quarto page embeds a figure of {stage}"
        assert f"_metrics/{stage}.md" in text, f"no hand-written page includes the metrics table of {stage}"
    for q, targets in _pages_and_targets():  # every embedded figure is cross-referenced in the prose
        for nb, label, line in targets:
            assert f"@{label}" in q.read_text(), f"{q.name}:{line}: {label} is embedded but never referenced"


def test_pipeline_ends_with_the_quarto_render(smoke_runs):
    out = _run(smoke_runs) / "report" / "quarto" / "_output"
    if QUARTO is None:
        pytest.skip("Quarto is not installed")
    for q, _ in _pages_and_targets():
        assert (out / f"{q.stem}.html").is_file(), f"./run_all.sh rendered no {q.stem}.html"


@needs_quarto
def test_quarto_renders_html_with_every_embed_captioned_and_cross_referenced(quarto_render, smoke_runs):
    dest, seconds = quarto_render
    figures = {(nb.name, f.label): f for s, nb in report.stage_notebooks(_run(smoke_runs))
               for f in report.notebook_figures(nb, s)}
    for q, targets in _pages_and_targets():
        page = dest / "_output" / f"{q.stem}.html"
        assert page.is_file(), f"quarto wrote no {page.name}"
        text = page.read_text()
        assert not re.search(r"\?@(fig|tbl)-", text), f"{page.name}: an unresolved cross-reference"
        if "$\\" in q.read_text():
            assert "<math" in text and "cdn.jsdelivr.net/npm/mathjax" not in text, f"{page.name}: math is not MathML"
        for nb, label, line in targets:
            fig = figures.get((Path(nb).name, label))
            assert fig is not None, f"{q.name}:{line}: {nb} has no cell labelled {label}"
            assert f'id="{label}"' in text, f"{page.name}: no figure {label} ({nb})"
            caption = re.search(rf'<figcaption[^>]*id="{label}-caption[^>]*>(.*?)</figcaption>', text, re.S)
            assert caption and _letters(fig.caption) in _letters(caption.group(1)), f"{page.name}: caption of {label}"
            assert re.search(rf'<a href="#{label}" class="quarto-xref">Figure(\s|&nbsp;)*\d+</a>', text), \
                f"{page.name}: no working cross-reference to {label}"
        assert 'id="tbl-metrics-' in text, f"{page.name}: no key-metrics table"
    assert seconds["html"] <= 3 * BUDGET_S["html"], f"HTML render took {seconds['html']} s (goal {BUDGET_S['html']} s)"


@needs_quarto
def test_quarto_renders_pdf_with_every_caption(quarto_render, smoke_runs):
    dest, seconds = quarto_render
    if report.latex_engine(REPO / "reports") is None:
        pytest.skip("no LaTeX engine (apt.txt installs pdflatex)")
    assert shutil.which("pdftotext"), "pdftotext is missing (apt.txt: poppler-utils)"
    figures = {(nb.name, f.label): f for s, nb in report.stage_notebooks(_run(smoke_runs))
               for f in report.notebook_figures(nb, s)}
    for q, targets in _pages_and_targets():
        pdf = dest / "_output" / f"{q.stem}.pdf"
        assert pdf.is_file(), f"quarto wrote no {pdf.name}"
        text = _words(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout)
        assert "??" not in text, f"{pdf.name}: an unresolved cross-reference"
        for n, (nb, label, line) in enumerate(targets, 1):
            cap = figures[(Path(nb).name, label)].caption
            assert _letters(f"Figure {n}: {cap}") in _letters(text), f"{pdf.name}: no caption of {label} ({nb}) as Figure {n}"
            assert text.count(f"Figure {n}") >= 2, f"{pdf.name}: Figure {n} ({label}) is never referenced"
    assert seconds["pdf"] <= 3 * BUDGET_S["pdf"], f"PDF render took {seconds['pdf']} s (goal {BUDGET_S['pdf']} s)"


@needs_quarto
def test_a_missing_embed_target_fails_naming_notebook_and_label(smoke_runs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "reports", src, ignore=shutil.ignore_patterns("notebooks", "_output", ".quarto", "_metrics"))
    page = src / "representations.qmd"
    page.write_text(page.read_text() + "\n{{< embed notebooks/03_autoencoder.ipynb#fig-not-there >}}\n")
    with pytest.raises(report.ReportError) as e:
        report.render_quarto(_run(smoke_runs), src, tmp_path / "out", formats=("html",))
    assert "notebooks/03_autoencoder.ipynb has no cell labelled fig-not-there" in str(e.value)
    assert "representations.qmd:" in str(e.value)


class _Chromium:
    """Headless Chromium driven over the DevTools protocol: open a page, read its images and console errors."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]

    def __init__(self, profile: Path):
        import urllib.request

        import websocket

        self.proc = subprocess.Popen([CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "--remote-allow-origins=*", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.n, self.events = 0, []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(e.get("method") == method for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def open(self, path: Path) -> tuple[list[dict], list[str]]:
        """(images: src and naturalWidth, console errors) of a local page once it and its images loaded."""
        self.events = []
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        js = ("Promise.all(Array.from(document.images).map(i => { i.loading = 'eager'; return i.complete ? 0 :"
              " new Promise(r => { i.onload = i.onerror = r; setTimeout(r, 20000); }); }))"
              ".then(() => JSON.stringify(Array.from(document.images).map(i => ({src: i.currentSrc || i.src,"
              " width: i.naturalWidth}))))")
        images = json.loads(self.call("Runtime.evaluate", expression=js, awaitPromise=True)["result"]["value"])
        time.sleep(0.5)
        self.call("Runtime.evaluate", expression="1")  # drain the events that arrived meanwhile
        errors = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                errors.append(p["exceptionDetails"].get("exception", {}).get("description", str(p["exceptionDetails"])))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(f"{p['entry'].get('text')} {p['entry'].get('url', '')}")
        return images, errors

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@needs_chromium
def test_html_reports_load_every_image_without_console_errors(smoke_runs, tmp_path, request):
    """Our HTML report and every page of Quarto's (when Quarto is installed), opened in headless Chromium."""
    run = _run(smoke_runs)
    pages = {run / "report" / "index.html": sum(len(report.notebook_figures(nb, s)) for s, nb in report.stage_notebooks(run))}
    if QUARTO is not None:
        dest, _ = request.getfixturevalue("quarto_render")
        for page in sorted((dest / "_output").glob("*.html")):
            qmd = dest / f"{page.stem}.qmd"
            pages[page] = len(report.embed_targets(qmd)) if qmd.exists() else 0
    browser = _Chromium(tmp_path / "profile")
    try:
        for page, expected in pages.items():
            images, errors = browser.open(page)
            assert len(images) >= expected, f"{page}: {len(images)} images, {expected} figures expected"
            broken = [i["src"] for i in images if not i["width"] > 0]
            assert not broken, f"{page}: images that did not load: {broken[:5]}"
            assert not errors, f"{page}: console errors: {errors[:5]}"
    finally:
        browser.close()

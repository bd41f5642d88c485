"""Reports of a run: an HTML report (no Quarto needed), the figures gathered, Quarto and thesis inputs.

    runs/<set>/report/index.html                  every stage: status, key metrics, labelled figures
    runs/<set>/report/<stage>.html                its executed notebook (nbconvert)
    runs/<set>/report/figures/<stage>/<name>.pdf|png
    reports/notebooks/<stage>.ipynb               copies for `quarto render reports/` (ptmrec report --run)
    reports/figures-<stage>.qmd                   every labelled figure of a notebook, embedded
    thesis/generated/...                          what thesis/*.tex references (ptmrec thesis --run)

``pipeline.run()`` writes the HTML report at the end of every successful run; it only converts
notebooks newer than their HTML, so it takes seconds. A figure is a notebook cell whose source
starts with ``#| label: fig-...`` (and ``#| fig-cap: "..."``), Quarto's cell options; its files are
the ``plots.save(fig, OUT, "<name>")`` it calls, or figures/<name>.png it shows.

Thesis: ``thesis/**/*.tex`` reference generated files as ``generated/<stage>/<path>`` (a file a
stage wrote, e.g. ``generated/03_autoencoder/figures/token_map.pdf``) or
``generated/tables/<name>.tex`` (a table made here from a run's plain files, see TABLES).
``thesis_assets`` copies / makes exactly those; a missing one is an error naming the file, the
.tex line that needs it and the stage that should have made it.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from .paths import REPO, atomic_path, read_json, write_text
from .registry import Registry

FIGURE_EXTS = (".pdf", ".png")
_OPTION = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*)$")
_SAVED = re.compile(r"plots\.save\([^)]*?[\"']([\w.-]+)[\"']\s*\)")
_SHOWN = re.compile(r"[\"']([\w.-]+)\.(?:png|pdf)[\"']")


class ReportError(RuntimeError):
    """A report or thesis input cannot be made; the message names what is missing and who makes it."""


@dataclass(frozen=True)
class Figure:
    stage: str
    label: str  # fig-...
    caption: str
    name: str  # file stem under <stage>/figures/
    cell: int  # index of the cell in the notebook
    has_output: bool  # the executed cell shows an image


# ------------------------------------------------------------------------------ notebooks


def cell_options(source: str) -> dict[str, str]:
    """Quarto cell options: the leading ``#| key: value`` lines of a code cell (values YAML-parsed)."""
    opts = {}
    for line in source.splitlines():
        m = _OPTION.match(line.strip())
        if not m:
            break
        try:
            value = yaml.safe_load(m.group(2))
        except yaml.YAMLError:
            value = m.group(2)
        opts[m.group(1)] = "" if value is None else str(value)
    return opts


def stage_notebooks(run: str | Path) -> list[tuple[str, Path]]:
    """(stage, executed notebook) of a run: registered stages in order, then any others by name."""
    from .pipeline import STAGES

    folder = Path(run) / "notebooks"
    found = {p.stem: p for p in folder.glob("*.ipynb")} if folder.is_dir() else {}
    order = [s for s in STAGES if s in found] + sorted(s for s in found if s not in STAGES)
    return [(s, found[s]) for s in order]


def notebook_figures(path: str | Path, stage: str | None = None) -> list[Figure]:
    """The labelled figures (``#| label: fig-...``) of a notebook, in cell order."""
    nb = json.loads(Path(path).read_text())
    stage = stage or Path(path).stem
    figs = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        opts = cell_options(src)
        label = opts.get("label", "")
        if not label.startswith("fig-"):
            continue
        m = _SAVED.search(src) or _SHOWN.search(src)
        name = m.group(1) if m else label[4:].replace("-", "_")
        shown = any(o.get("output_type") in ("display_data", "execute_result")
                    and any(k.startswith("image/") for k in o.get("data", {})) for o in cell.get("outputs", []))
        figs.append(Figure(stage, label, opts.get("fig-cap", ""), name, i, shown))
    return figs


def notebook_failed(path: str | Path) -> str | None:
    """The error of an executed notebook (``ename: evalue`` of its first error output), or None."""
    for cell in json.loads(Path(path).read_text())["cells"]:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                return f"{o.get('ename', '')}: {o.get('evalue', '')}"
    return None


# -------------------------------------------------------------------------------- figures


def figure_files(run: str | Path) -> dict[str, list[Path]]:
    """Stage -> its figure files (runs/<set>/<stage>/figures/*.pdf|png), sorted."""
    out = {}
    for d in sorted(Path(run).glob("*/figures")):
        files = sorted(p for p in d.iterdir() if p.suffix in FIGURE_EXTS and not p.name.startswith("."))
        if files:
            out[d.parent.name] = files
    return out


def _copy_if_newer(src: Path, dst: Path) -> bool:
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime and dst.stat().st_size == src.stat().st_size:
        return False
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return True


def collect_figures(run: str | Path, dest: str | Path) -> list[Path]:
    """Copy every figure of a run to dest/<stage>/<name>.pdf|png (only what changed); return the copies."""
    dest = Path(dest)
    copies = []
    for stage, files in figure_files(run).items():
        for f in files:
            _copy_if_newer(f, dest / stage / f.name)
            copies.append(dest / stage / f.name)
    return copies


def figure_size_in(path: str | Path) -> tuple[float, float]:
    """(width, height) in inches of a saved figure: a PDF's MediaBox, or a PNG's pixels at its DPI (200)."""
    path = Path(path)
    if path.suffix == ".pdf":
        m = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", path.read_bytes())
        if not m:
            raise ReportError(f"{path}: no /MediaBox in the PDF")
        x0, y0, x1, y1 = map(float, m.groups())
        return (x1 - x0) / 72, (y1 - y0) / 72
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi", (200, 200))[0] or 200
        return im.width / dpi, im.height / dpi


# ----------------------------------------------------------------------------- HTML report


def _summary(metrics: dict) -> dict:
    """The scalar figures of a stage's metrics.json (what its summary cell printed), for the index."""
    skip = {"stage", "params"}
    return {k: v for k, v in metrics.items() if k not in skip and isinstance(v, (int, float, str, bool)) and
            not (isinstance(v, str) and len(v) > 60)}


def _convert(nb: Path, out: Path) -> bool:
    """nbconvert one executed notebook to HTML unless the HTML is newer; return whether it converted."""
    if out.exists() and out.stat().st_mtime >= nb.stat().st_mtime:
        return False
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_filename(str(nb))
    write_text(out, body)
    return True


_STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border-bottom:1px solid #ddd;padding:.2rem .6rem;text-align:left;
vertical-align:top;font-size:.9rem}figure{display:inline-block;width:46%;margin:.5rem 1%;vertical-align:top}
figure img{width:100%;border:1px solid #eee}figcaption{font-size:.85rem}.bad{color:#b00}.ok{color:#070}
code{font-size:.85rem}"""


def write_html_report(run: str | Path) -> Path:
    """Write runs/<set>/report/: index.html, one HTML per executed notebook, figures/; return index.html."""
    run = Path(run)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder (run ./run_all.sh params/<set>.yaml first)")
    out = run / "report"
    notebooks = stage_notebooks(run)
    collect_figures(run, out / "figures")
    rows, sections = [], []
    for stage, nb in notebooks:
        _convert(nb, out / f"{stage}.html")
        marker, metrics = run / stage / "_stage.json", run / stage / "metrics.json"
        err = notebook_failed(nb)
        done = read_json(marker) if marker.exists() else None
        status = (f'<span class="bad">failed: {html.escape(err)}</span>' if err else
                  f'<span class="ok">done {html.escape(str(done.get("finished", "")))} '
                  f'({done.get("seconds", "?")} s)</span>' if done else '<span class="bad">not finished</span>')
        summary = _summary(read_json(metrics)) if metrics.exists() else {}
        figures = notebook_figures(nb, stage)
        cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
        rows.append(f'<tr><td><a href="#{stage}">{stage}</a></td><td>{status}</td>'
                    f'<td><a href="{stage}.html">notebook</a></td><td>{len(figures)}</td></tr>')
        figs = []
        for f in figures:
            png, pdf = f"figures/{stage}/{f.name}.png", f"figures/{stage}/{f.name}.pdf"
            links = " ".join(f'<a href="{p}">{p.rsplit(".", 1)[1].upper()}</a>' for p in (pdf, png) if (out / p).exists())
            img = f'<img src="{png}" alt="{html.escape(f.label)}">' if (out / png).exists() else \
                f'<p class="bad">no file figures/{f.name}.png in {stage}/</p>'
            figs.append(f'<figure id="{f.label}">{img}<figcaption><b>{f.label}</b>: {html.escape(f.caption)} '
                        f'{links}</figcaption></figure>')
        bare = "".join(f"<li>{html.escape(u)}</li>" for u in unlabelled_figures(nb, stage))
        sections.append(f'<h2 id="{stage}">{stage}</h2><p>{status} · <a href="{stage}.html">executed notebook</a></p>'
                        + (f"<table>{cells}</table>" if cells else "") + "".join(figs)
                        + (f'<p class="bad">Figure cells without a <code>#| label: fig-...</code> (not in the Quarto '
                           f'report; label them):</p><ul>{bare}</ul>' if bare else ""))
    title = f"ptmrec run {html.escape(run.name)}"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{title}</h1><p>{html.escape(str(run.resolve()))} · written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
            + "".join(f' · <a href="../{s}/params.resolved.yaml">resolved parameters</a>' for s, _ in notebooks[:1])
            + "</p><table><tr><th>stage</th><th>status</th><th>HTML</th><th>figures</th></tr>"
            + "".join(rows) + "</table>" + "".join(sections) + "</body></html>\n")
    write_text(out / "index.html", page)
    return out / "index.html"


# ---------------------------------------------------------------------------------- Quarto

QUARTO_MISSING = ("Quarto is not installed, so the run's Quarto report (HTML, PDF) was not rendered; install it "
                  "from https://quarto.org/docs/get-started/ or with `conda install -c conda-forge quarto`, "
                  "then run `ptmrec report --run {run} --render`.")
_GENERATED_QUARTO = ("notebooks", "_output", ".quarto", "_metrics", "figures.qmd")


class QuartoMissing(ReportError):
    """``quarto`` is not on the PATH (the message is one plain sentence saying how to install it)."""


def unlabelled_figures(path: str | Path, stage: str | None = None) -> list[str]:
    """Code cells of an executed notebook that show an image but carry no ``#| label: fig-...``, as
    ``<stage>: cell <i> (<first line>)``: Quarto cannot embed them, so they are listed, never dropped silently."""
    nb = json.loads(Path(path).read_text())
    stage = stage or Path(path).stem
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or cell_options("".join(cell["source"])).get("label", "").startswith("fig-"):
            continue
        if any(o.get("output_type") in ("display_data", "execute_result")
               and any(k.startswith("image/") for k in o.get("data", {})) for o in cell.get("outputs", [])):
            first = next((line for line in "".join(cell["source"]).splitlines() if line.strip()), "")
            out.append(f"{stage}: cell {i} ({first[:60]})")
    return out


def _flat(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for k, v in metrics.items():
        if not prefix and k in ("stage", "params"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flat(v, key + ".")
        elif isinstance(v, (int, float, str, bool)) and not (isinstance(v, str) and len(v) > 60):
            rows.append((key, v))
    return rows


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def metrics_markdown(run: str | Path, stage: str, limit: int = 24) -> str:
    """A Markdown table of a stage's key metrics (the scalars of its metrics.json), captioned and labelled
    ``tbl-metrics-<NN>`` for a cross-reference; a note naming the stage when the run has no metrics.json."""
    run = Path(run)
    path = run / stage / "metrics.json"
    num = stage.split("_", 1)[0]
    if not path.exists():
        return (f"*Stage {stage} has no metrics.json in run {run.name}: run "
                f"`./run_all.sh params/{run.name}.yaml --from {stage}`.*\n")
    rows = _flat(read_json(path))
    more = len(rows) - limit
    lines = ["| metric | value |", "|:--|--:|"] + [f"| `{k}` | {_fmt(v)} |" for k, v in rows[:limit]]
    note = f"; {more} more in metrics.json" if more > 0 else ""
    return "\n".join(lines) + f"\n\n: Key metrics of stage {stage} (run {run.name}{note}) {{#tbl-metrics-{num}}}\n"


_RICH = ("text/html", "application/javascript", "text/latex")


def _quarto_notebook(src: Path, dst: Path) -> None:
    """Copy an executed notebook for Quarto, dropping the HTML/JavaScript representation of any output that
    has a plain or image one too (a DataFrame's table): with such an output anywhere in a notebook, Quarto
    puts require.js and jQuery from a CDN into every page that embeds it, which breaks the offline report."""
    if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    nb = json.loads(src.read_text())
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            data = o.get("data")
            if data and any(k in data for k in _RICH) and any(k not in _RICH for k in data):
                o["data"] = {k: v for k, v in data.items() if k not in _RICH}
    nb.get("metadata", {}).pop("widgets", None)
    write_text(dst, json.dumps(nb, indent=1))


def prepare_quarto(run: str | Path, reports: str | Path = REPO / "reports", notebook_url: str | None = None,
                   only_unembedded: bool = False) -> list[Path]:
    """Copy a run's executed notebooks into reports/notebooks/ and write the generated pages and includes.

    ``figures-<stage>.qmd`` embeds every labelled figure of one notebook (one page per stage: labels
    are unique within a notebook, not across notebooks) and ``figures.qmd`` links them and lists the
    figure cells without a label. ``_metrics/<stage>.md`` is the key-metrics table of each stage and
    ``_metrics/run.md`` names the run (the hand-written pages include both) and, given ``notebook_url``
    (e.g. ``"../../{stage}.html"``), links each executed notebook's HTML. ``only_unembedded`` leaves out of
    the figure pages every figure a hand-written page of ``reports`` already embeds (what a run renders:
    a figure that a notebook gains shows there until a page embeds it). Afterwards
    ``quarto render reports/`` renders these and the hand-written pages. Returns the copied notebooks.
    """
    from .pipeline import STAGES

    run, reports = Path(run), Path(reports)
    notebooks = stage_notebooks(run)
    if not notebooks:
        raise ReportError(f"{run}/notebooks: no executed notebooks (run ./run_all.sh params/<set>.yaml first)")
    dest = reports / "notebooks"
    dest.mkdir(parents=True, exist_ok=True)
    for old in list(dest.glob("*.ipynb")) + list(reports.glob("figures-*.qmd")):
        old.unlink()
    copies, unlabelled = [], []
    shown = {(Path(nb).name, label) for q in hand_written_pages(reports) for nb, label, _ in embed_targets(q)} \
        if only_unembedded else set()
    index = ["---", f'title: "Every figure of run {run.name}"', "---", "",
             f"Generated by `ptmrec report --run {run}`: one page per executed notebook, each embedding "
             + ("every labelled figure of it that no hand-written page embeds." if only_unembedded
                else "every labelled figure of it."), ""]
    for stage, nb in notebooks:
        _quarto_notebook(nb, dest / nb.name)
        copies.append(dest / nb.name)
        unlabelled += unlabelled_figures(nb, stage)
        figs = [f for f in notebook_figures(nb, stage) if (nb.name, f.label) not in shown]
        if not figs:
            continue
        page = ["---", f'title: "{stage}"', "---", ""] + [f"{{{{< embed notebooks/{nb.name}#{f.label} >}}}}\n"
                                                           for f in figs]
        write_text(reports / f"figures-{stage}.qmd", "\n".join(page))
        index.append(f"- [{stage}](figures-{stage}.qmd): {len(figs)} figures")
    if only_unembedded and not any(line.startswith("- [") for line in index):
        index.append("Every labelled figure of the run is on the hand-written pages.")
    if unlabelled:
        index += ["", "Figure cells without a `#| label: fig-...` (Quarto cannot embed them; label them):", ""]
        index += [f"- {u}" for u in unlabelled]
    write_text(reports / "figures.qmd", "\n".join(index) + "\n")
    links = "" if notebook_url is None else " Executed notebooks: " + ", ".join(
        f"[{s}]({notebook_url.format(stage=s)})" for s, _ in notebooks) + "."
    write_text(reports / "_metrics" / "run.md",
               f"Figures and tables of run `{run.name}` ({run.resolve()}, {run_finished(run)}).{links}\n")
    for stage in list(STAGES) + [s for s, _ in notebooks if s not in STAGES]:
        write_text(reports / "_metrics" / f"{stage}.md", metrics_markdown(run, stage))
    return copies


def embed_targets(qmd: str | Path) -> list[tuple[str, str, int]]:
    """(notebook path, cell label, line) of every ``{{< embed notebook.ipynb#label >}}`` in a .qmd file."""
    pat = re.compile(r"\{\{<\s*embed\s+([^#\s>]+\.ipynb)#([\w-]+)")
    return [(m.group(1), m.group(2), i + 1) for i, line in enumerate(Path(qmd).read_text().splitlines())
            for m in pat.finditer(line)]


def hand_written_pages(reports: str | Path) -> list[Path]:
    """The hand-written pages of a Quarto project (every .qmd but the generated figures*.qmd)."""
    return sorted(q for q in Path(reports).glob("*.qmd") if not q.name.startswith("figures"))


def check_embeds(reports: str | Path, run: str | Path) -> list[str]:
    """Problems of reports/*.qmd against a run: embed targets whose notebook or label is missing, each naming
    the page and line, the notebook, the label and the stage that makes the notebook."""
    from .pipeline import STAGES

    run = Path(run)
    notebooks = dict((p.name, p) for _, p in stage_notebooks(run))
    problems = []
    for qmd in sorted(Path(reports).glob("*.qmd")):
        for nb, label, line in embed_targets(qmd):
            name = Path(nb).name
            stage = Path(nb).stem
            if name not in notebooks:
                who = (f"stage {stage} makes it: ./run_all.sh params/{run.name}.yaml --from {stage}" if stage in STAGES
                       else f"no stage is called {stage} ({', '.join(STAGES)})")
                problems.append(f"{qmd.name}:{line}: notebook {nb} is not an executed notebook of {run} ({who})")
            else:
                figs = {f.label: f for f in notebook_figures(notebooks[name])}
                if label not in figs:
                    have = ", ".join(figs) or "none"
                    problems.append(f"{qmd.name}:{line}: {nb} has no cell labelled {label} (its labels: {have})")
                elif not figs[label].has_output:
                    problems.append(f"{qmd.name}:{line}: the cell labelled {label} of {nb} shows no image (did stage "
                                    f"{stage} finish? ./run_all.sh params/{run.name}.yaml --from {stage})")
    return problems


def quarto_sources(reports: str | Path, dest: str | Path) -> Path:
    """Copy the hand-written sources of the Quarto project (pages, _quarto.yml, assets; nothing generated) to dest."""
    reports, dest = Path(reports), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for p in reports.iterdir():
        if p.name in _GENERATED_QUARTO or p.name.startswith(("figures-", ".")) or p.name.endswith("_files"):
            continue
        if p.is_dir():
            shutil.copytree(p, dest / p.name, dirs_exist_ok=True)
        else:
            shutil.copy2(p, dest / p.name)
    return dest


def latex_engine(reports: str | Path = REPO / "reports") -> str | None:
    """The PDF engine the Quarto project names (format: pdf: pdf-engine), if it is on the PATH; else None."""
    conf = yaml.safe_load((Path(reports) / "_quarto.yml").read_text()) or {}
    pdf = ((conf.get("format") or {}).get("pdf") or {})
    engine = pdf.get("pdf-engine", "xelatex") if isinstance(pdf, dict) else "xelatex"
    return engine if shutil.which(engine) else None


def _quarto_fresh(run: Path, reports: Path, dest: Path, formats: tuple[str, ...]) -> bool:
    """Whether every page's output of every format is newer than the run's notebooks and metrics, the
    project's sources and this module (nothing to render again)."""
    outputs = [dest / "_output" / f"{q.stem}.{fmt}" for q in hand_written_pages(reports) for fmt in formats
               if fmt == "html" or latex_engine(reports)]
    if not outputs or not all(o.exists() for o in outputs):
        return False
    inputs = [nb for _, nb in stage_notebooks(run)] + list(run.glob("*/metrics.json")) + [Path(__file__)]
    inputs += [p for p in reports.iterdir() if p.is_file() and not p.name.startswith(("figures", "."))]
    return min(o.stat().st_mtime for o in outputs) > max(p.stat().st_mtime for p in inputs)


def run_finished(run: str | Path) -> str:
    """When the run's last stage finished (from its _stage.json markers), for saying which run a report drew from."""
    finished = [read_json(p).get("finished", "") for p in Path(run).glob("*/_stage.json")]
    return f"last stage finished {max(finished)}" if finished else "no stage finished"


def find_quarto(quarto: str = "quarto") -> str | None:
    """The quarto executable: on the PATH, else beside the running Python (setup.sh links it into .venv/bin)."""
    beside = Path(sys.executable).parent / quarto
    return shutil.which(quarto) or (str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None)


def render_quarto(run: str | Path, reports: str | Path = REPO / "reports", dest: str | Path | None = None,
                  formats: tuple[str, ...] = ("html", "pdf"), quarto: str = "quarto",
                  log: Callable[[str], None] = print, force: bool = False) -> dict[str, float]:
    """Render the Quarto project of a run into runs/<set>/report/quarto/_output/; return seconds per format.

    The hand-written pages of ``reports`` and the run's notebooks, figure pages and metric tables
    (``prepare_quarto``) are put together in ``dest`` (default runs/<set>/report/quarto), so each run
    keeps its own rendered report. Every embed target is checked first (a missing notebook or label
    raises naming both); HTML always, PDF only when the LaTeX engine is installed (said, otherwise).
    Raises ``QuartoMissing`` (one sentence) when quarto is not on the PATH, ``ReportError`` when a render fails.
    """
    run = Path(run)
    exe = find_quarto(quarto)
    if exe is None:
        raise QuartoMissing(QUARTO_MISSING.format(run=run))
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder (run ./run_all.sh params/<set>.yaml first)")
    dest = Path(dest) if dest else run / "report" / "quarto"
    if not force and _quarto_fresh(run, Path(reports), dest, formats):
        log(f"Quarto report up to date: {dest / '_output'}")
        return {}
    quarto_sources(reports, dest)
    prepare_quarto(run, dest, notebook_url="../../{stage}.html", only_unembedded=True)
    # Quarto's own notebook previews would double the render time; the run's report already has each
    # executed notebook as HTML (nbconvert, linked from the pages), so the copy in dest renders without them.
    conf = yaml.safe_load((dest / "_quarto.yml").read_text())
    html_conf = conf.setdefault("format", {}).setdefault("html", {})
    if isinstance(html_conf, dict):
        html_conf["notebook-view"] = False
    write_text(dest / "_quarto.yml", yaml.safe_dump(conf, sort_keys=False))
    problems = check_embeds(dest, run)
    if problems:
        raise ReportError(f"the Quarto pages embed figures run {run} lacks:\n  " + "\n  ".join(problems))
    for u in [u for s, nb in stage_notebooks(run) for u in unlabelled_figures(nb, s)]:
        log(f"figure without a label (not in the Quarto report): {u}")
    env = {**os.environ}
    env.setdefault("QUARTO_PYTHON", sys.executable)
    seconds = {}
    for fmt in formats:
        if fmt == "pdf" and latex_engine(dest) is None:
            log("Quarto PDF skipped: no LaTeX engine on the PATH (apt.txt installs it)")
            continue
        if fmt != "html":  # one document per hand-written page; the generated figure pages are HTML only
            conf = yaml.safe_load((dest / "_quarto.yml").read_text())
            conf.setdefault("project", {})["render"] = [q.name for q in hand_written_pages(dest)]
            write_text(dest / "_quarto.yml", yaml.safe_dump(conf, sort_keys=False))
        t0 = time.time()
        r = subprocess.run([exe, "render", str(dest), "--to", fmt], capture_output=True, text=True, env=env, cwd=dest)
        if r.returncode != 0:
            lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in (r.stderr or r.stdout).strip().splitlines()]
            tail = "\n".join(line for line in lines if line.strip() and not line.lstrip().startswith("at ")
                              and line.strip() != "Stack trace:")[-3000:]
            done = "".join(f" ({f.upper()} rendered into {dest / '_output'} in {v} s)" for f, v in seconds.items())
            raise ReportError(f"quarto render {dest} --to {fmt} failed (exit {r.returncode}){done}:\n{tail}")
        seconds[fmt] = round(time.time() - t0, 1)
    return seconds


# --------------------------------------------------------------------------------- thesis

TABLES = Registry("thesis table")  # name -> fn(run: Path) -> LaTeX
_GENERATED = re.compile(r"generated/([\w./-]+)")


def register_table(name: str) -> Callable:
    """Decorator: register ``fn(run: Path) -> str`` (a LaTeX table) as thesis/generated/tables/<name>.tex."""

    return TABLES.register(name)


def list_tables(pattern: str = "*") -> list[str]:
    return TABLES.list(pattern)


def latex_escape(text: object) -> str:
    """Text safe in LaTeX (underscores in model and task ids, percent signs, ...)."""
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(c, c) for c in str(text))


def latex_table(df, floats: int = 3) -> str:
    """A booktabs tabular of a DataFrame (header = columns, escaped; floats rounded); no float environment."""
    import numpy as np

    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "--" if np.isnan(v) else f"{v:.{floats}f}"
        return latex_escape(v)

    cols = "l" + "r" * (len(df.columns) - 1)
    lines = [rf"\begin{{tabular}}{{{cols}}}", r"\toprule", " & ".join(latex_escape(c) for c in df.columns) + r" \\",
             r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def _need(run: Path, rel: str) -> Path:
    path = run / rel
    if not path.exists():
        stage = rel.split("/")[0]
        raise ReportError(f"{path} does not exist: stage {stage} should have made it "
                          f"(run ./run_all.sh params/{run.name}.yaml --from {stage})")
    return path


@register_table("zoo")
def _zoo_table(run: Path) -> str:
    """Models per architecture family: count, source tasks, parameters (median, millions)."""
    import pandas as pd

    zoo = pd.read_csv(_need(run, "00_zoo_and_tasks/zoo/index.csv"))
    g = zoo.groupby("family").agg(models=("model_id", "size"), sources=("source_task", "nunique"),
                                  params=("num_params", "median")).reset_index()
    g["params"] = g["params"] / 1e6
    return latex_table(g.rename(columns={"params": "params (M, median)", "sources": "source tasks"}), 2)


@register_table("groundtruth")
def _groundtruth_table(run: Path) -> str:
    """Per transfer method: tasks, mean accuracy of the best / worst model, mean range and std over the zoo."""
    import pandas as pd

    s = pd.read_csv(_need(run, "01_groundtruth/spread.csv"))
    g = s.groupby("method").agg(tasks=("task_id", "nunique"), best=("best", "mean"), worst=("worst", "mean"),
                                range=("range", "mean"), std=("std", "mean"), chance=("chance", "mean")).reset_index()
    return latex_table(g)


@register_table("noise")
def _noise_table(run: Path) -> str:
    """The noise ceiling: agreement between two ground-truth runs with different seeds (mean, min over tasks)."""
    import pandas as pd

    n = pd.read_csv(_need(run, "01_groundtruth/noise.csv"))
    n = n.assign(split=n.split if "split" in n.columns else "test")
    rows = [dict(statistic=c.replace("_", " "), test_split="same" if s == "test" else "fresh", mean=g[c].mean(),
                 min=g[c].min(), tasks=len(g)) for s, g in n.groupby("split") for c in ("kendall_tau", "weighted_tau")]
    return latex_table(pd.DataFrame(rows))


@register_table("extractors")
def _extractor_table(run: Path) -> str:
    """Probe scores of each parameter-vector design on held-out models."""
    import pandas as pd

    d = pd.read_csv(_need(run, "02_model_vectors/designs.csv"))
    return latex_table(d[["extractor", "family", "source_task", "transfer_tau"]])


@register_table("tokens")
def _token_table(run: Path) -> str:
    """The same probes on raw parameter vectors and on autoencoder tokens."""
    import pandas as pd

    d = pd.read_csv(_need(run, "03_autoencoder/probes.csv"))
    return latex_table(d[["representation", "family", "source_task", "transfer_tau"]])


def run_macros(run: Path) -> str:
    """generated/run.tex: \\ptmrecRun (the run's name), \\ptmrecRunDate (when its last stage finished) and the
    headline of stage 07, so that the prose states the run's own numbers: \\ptmrecRankerTau,
    \\ptmrecBestEstimator, \\ptmrecBestEstimatorTau, \\ptmrecPopularityTau, \\ptmrecNeighboursTau,
    \\ptmrecRankerVerdict ("beats" or "does not beat"), \\ptmrecWilcoxonP, \\ptmrecLmoRankerTau,
    \\ptmrecRankerAllTau, \\ptmrecBestDatasetTau and \\ptmrecNearestDatasetTau (copying one training dataset's
    ranking: the best in hindsight, the nearest by dataset tokens) ("--" when missing)."""
    finished = [read_json(p).get("finished", "") for p in run.glob("*/_stage.json")]
    m = read_json(run / "07_evaluate/metrics.json") if (run / "07_evaluate/metrics.json").is_file() else {}
    num = lambda v: "--" if v is None else f"{float(v):.2f}"  # noqa: E731
    test = (m.get("wilcoxon") or {}).get("ranker_vs_best_estimator") or {}
    head = {"RankerTau": num(m.get("ranker_weighted_tau")), "BestEstimator": str(m.get("best_estimator", "--")),
            "BestEstimatorTau": num(m.get("best_estimator_weighted_tau")),
            "PopularityTau": num(m.get("popularity_weighted_tau")),
            "NeighboursTau": num(m.get("neighbours_weighted_tau")),
            "RankerVerdict": "beats" if m.get("ranker_beats_best_estimator") else "does not beat",
            "WilcoxonP": "--" if test.get("p_value") is None else f"{test['p_value']:.2g}",
            "LmoRankerTau": num(m.get("lmo_ranker_weighted_tau")), "RankerAllTau": num(m.get("ranker_all_weighted_tau")),
            "BestDatasetTau": num(m.get("agreement_best_training_dataset")),
            "NearestDatasetTau": num(m.get("agreement_nearest_training_dataset"))}
    return (f"\\newcommand{{\\ptmrecRun}}{{{latex_escape(run.name)}}}\n"
            f"\\newcommand{{\\ptmrecRunDate}}{{{latex_escape(max(finished) if finished else 'unfinished')}}}\n"
            + "".join(f"\\newcommand{{\\ptmrec{k}}}{{{latex_escape(v)}}}\n" for k, v in head.items()))


def thesis_references(thesis: str | Path) -> dict[str, list[str]]:
    """Every ``generated/...`` path the thesis sources name -> where (file:line), from thesis/**/*.tex."""
    thesis = Path(thesis)
    refs: dict[str, list[str]] = {}
    for tex in sorted(thesis.rglob("*.tex")):
        if "generated" in tex.relative_to(thesis).parts:
            continue
        for i, line in enumerate(tex.read_text().splitlines(), 1):
            code = re.split(r"(?<!\\)%", line, maxsplit=1)[0]  # not in comments
            for m in _GENERATED.finditer(code):
                rel = m.group(1).rstrip(".")
                if rel.startswith("tables/") and not rel.endswith(".tex"):
                    rel += ".tex"  # \input{generated/tables/zoo} means zoo.tex
                refs.setdefault(rel, []).append(f"{tex.relative_to(thesis)}:{i}")
    return refs


def figure_cell(run: str | Path, stage: str, name: str) -> Figure:
    """The labelled cell of the run's executed notebook of ``stage`` that makes figures/<name>.pdf|png.

    The thesis includes only such figures, the very ones the Quarto pages embed by label, so a figure
    changed in a notebook changes in both; a figure file no labelled cell makes is an error saying so.
    """
    run = Path(run)
    nb = run / "notebooks" / f"{stage}.ipynb"
    if not nb.exists():
        raise ReportError(f"{nb} does not exist: stage {stage} makes it "
                          f"(./run_all.sh params/{run.name}.yaml --from {stage})")
    figs = notebook_figures(nb, stage)
    for f in figs:
        if f.name == name:
            return f
    have = ", ".join(f"{f.label} ({f.name})" for f in figs) or "none"
    raise ReportError(f"figures/{name} is not made by a labelled figure cell of notebooks/{stage}.ipynb "
                      f"(its labelled figures: {have}); label the cell that saves it (#| label: fig-...) "
                      "so that the thesis and the Quarto pages show the same figure")


def thesis_figures(thesis: str | Path = REPO / "thesis") -> dict[str, tuple[str, str]]:
    """Every figure the thesis includes, ``generated/<stage>/figures/<name>.<ext>`` -> (stage, name)."""
    return {rel: (rel.split("/")[0], Path(rel).stem) for rel in thesis_references(thesis)
            if rel.split("/")[1:2] == ["figures"] and Path(rel).suffix in FIGURE_EXTS}


def thesis_assets(run: str | Path, thesis: str | Path = REPO / "thesis") -> list[Path]:
    """Fill thesis/generated/ with exactly the files the .tex sources reference; raise naming every missing one.

    ``generated/<stage>/<path>`` is copied from runs/<set>/<stage>/<path>; ``generated/tables/<name>.tex``
    is made by the registered table ``name``; ``generated/run.tex`` holds the run's macros.
    """
    from .pipeline import STAGES

    run, thesis = Path(run), Path(thesis)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder (run ./run_all.sh params/<set>.yaml first)")
    gen = thesis / "generated"
    made, missing = [], []
    for rel, where in sorted(thesis_references(thesis).items()):
        at = ", ".join(where)
        dst = gen / rel
        head, _, rest = rel.partition("/")
        try:
            if rel == "run.tex":
                write_text(dst, run_macros(run))
            elif head == "tables":
                name = Path(rest).stem
                if name not in TABLES:
                    raise ReportError(f"no table '{name}' in ptmrec.report (tables: {', '.join(list_tables())})")
                write_text(dst, TABLES[name](run))
            else:
                src = run / rel
                if not src.exists():
                    who = (f"stage {head} (notebooks/{head}.ipynb) should have made it; run "
                           f"./run_all.sh params/{run.name}.yaml --from {head}" if head in STAGES
                           else f"'{head}' is not a stage ({', '.join(STAGES)})")
                    raise ReportError(f"{src} does not exist: {who}")
                if rest.startswith("figures/"):
                    figure_cell(run, head, Path(rest).stem)  # one figure, one source: a labelled notebook cell
                _copy_if_newer(src, dst)
            made.append(dst)
        except ReportError as e:
            missing.append(f"generated/{rel} (needed by {at}): {e}")
    if missing:
        raise ReportError(f"thesis inputs missing for run {run}:\n  " + "\n  ".join(missing))
    return made


def build_thesis(run: str | Path, thesis: str | Path = REPO / "thesis", latexmk: str = "latexmk") -> Path:
    """thesis_assets, then ``latexmk -pdf main.tex`` in thesis/; return main.pdf. LaTeX errors raise with the log tail."""
    thesis = Path(thesis)
    thesis_assets(run, thesis)
    if shutil.which(latexmk) is None:
        raise ReportError(f"{latexmk} is not on the PATH: install latexmk and TeX Live (apt.txt), then run again")
    r = subprocess.run([latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", "main.tex"],
                       cwd=thesis, capture_output=True, text=True)
    if r.returncode != 0:
        log = (thesis / "main.log").read_text(errors="replace") if (thesis / "main.log").exists() else r.stdout
        errors = [line for line in log.splitlines() if line.startswith(("!", "./")) or "Error" in line]
        raise ReportError(f"latexmk failed in {thesis} ({r.returncode}):\n" + "\n".join(errors[-15:] or log[-3000:].splitlines()))
    return thesis / "main.pdf"


def write_run_reports(run: Path, stages: list[str]) -> None:
    """What every successful ``./run_all.sh`` ends with: the run's HTML report, then its Quarto report (HTML; PDF where LaTeX is installed) when ``quarto`` is on
    the PATH. A report that cannot be written or rendered is said plainly and never fails the run: the stages
    are done and recorded, and ``ptmrec report --run <run> --render`` redoes the report alone in seconds."""
    import sys
    import time

    run = Path(run)
    try:
        t0 = time.time()
        index = write_html_report(run)
        print(f"[ptmrec] report: {index} ({time.time() - t0:.1f} s)", flush=True)
    except Exception as e:  # noqa: BLE001 -- the stages are done and recorded; a report failure must not undo that
        print(f"[ptmrec] report NOT written: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return
    missing = [s for s in stages if not (run / "notebooks" / f"{s}.ipynb").exists()]
    if missing:  # a partial run (--only, a SLURM stage job): the pages would embed notebooks it lacks
        print(f"[ptmrec] Quarto report not rendered: the run has no executed notebook of {', '.join(missing)} "
              f"yet (./run_all.sh params/{run.name}.yaml makes them)", flush=True)
        return
    try:
        seconds = render_quarto(run, log=lambda m: print(f"[ptmrec] {m}", flush=True))
        took = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) or "up to date"
        print(f"[ptmrec] Quarto report: {run / 'report' / 'quarto' / '_output'}/index.html ({took})", flush=True)
    except QuartoMissing as e:
        print(f"[ptmrec] {e}", flush=True)
    except Exception as e:  # noqa: BLE001 -- as above: said, not fatal
        print(f"[ptmrec] Quarto report NOT rendered (the stages are done and recorded; fix this, then run "
              f"`ptmrec report --run {run} --render`): {e}", file=sys.stderr, flush=True)

"""SLURM on a real scheduler: a single-node cluster (munged, slurmctld, slurmd from Debian's slurm-wlm and
munge) started on this machine, the smoke set's sharded stages submitted through slurm/submit.sh, their
outputs compared with the local smoke run's; a failing notebook fails its job and its dependants never start."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import copy_stages
from ptmrec import extract, pipeline
from ptmrec.extract import load_vectors
from ptmrec.params import ExtractParams
from ptmrec.paths import REPO, read_json

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}
PROFILE = "local"  # slurm/clusters/local.env


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the single-node SLURM cluster runs slurmd as root; these tests run as another user"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [d for d in DAEMONS if shutil.which(d, path=path) is None]
    if missing:
        return f"SLURM / munge not installed ({', '.join(missing)} missing): apt.txt installs slurm-wlm and munge"
    return None


needs_cluster = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _profile_value(key: str) -> str:
    text = (REPO / "slurm" / "clusters" / f"{PROFILE}.env").read_text()
    m = re.search(rf"^{key}=(\S*)", text, re.M)
    return m.group(1) if m else ""


class Cluster:
    """munged + slurmctld + slurmd on 127.0.0.1, everything (config, state, logs, socket) in one folder."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ptmrec-slurm-"))
        self.dir.chmod(0o755)  # munged wants its socket's folders searchable by all
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
                    "SLURM_CONF": str(self.dir / "slurm.conf")}
        self.partition = _profile_value("PTMREC_PARTITION") or "local"

    def _spawn(self, name: str, *cmd: str) -> None:
        log = open(self.dir / f"{name}.stdout", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def start(self) -> None:
        d = self.dir
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(mode=0o755)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge" / "munge.sock"
        self._spawn("munged", "munged", "-F", f"--key-file={key}", f"--socket={sock}",
                    f"--pid-file={d / 'munge' / 'munged.pid'}", f"--log-file={d / 'munge' / 'munged.log'}",
                    f"--seed-file={d / 'munge' / 'munged.seed'}")
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        host = socket.gethostname().split(".")[0]
        mem_mb = int(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 * 0.9)
        (d / "slurm.conf").write_text(f"""\
ClusterName=ptmrec-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d / 'log' / 'jobcomp.txt'}
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        conf = str(d / "slurm.conf")
        self._spawn("slurmctld", "slurmctld", "-D", "-i", "-f", conf)
        self._spawn("slurmd", "slurmd", "-D", "-f", conf, "-N", host)
        deadline = time.time() + 60
        while time.time() < deadline:
            r = self.run("sinfo", "-h", "-o", "%t", check=False)
            if r.returncode == 0 and r.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster did not come up:\n{self.logs()}")

    def run(self, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, capture_output=True, text=True, env={**self.env, **(env or {})}, cwd=REPO, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def submit(self, runs: Path, *args: str) -> dict[str, str]:
        """slurm/submit.sh with the local profile into ``runs``: {"<stage>[-shards]": job id}."""
        r = self.run(str(REPO / "slurm" / "submit.sh"), *args, "--cluster", PROFILE, env={"PTMREC_RUNS": str(runs)})
        return dict(line.split() for line in r.stdout.splitlines() if line.strip())

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones are kept for an hour: MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job").stdout
        return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines()
                if line.startswith("JobId=")]

    def wait(self, ids: list[str], timeout: float) -> dict[str, list[dict[str, str]]]:
        """Poll until every job (and every task of an array job) of ``ids`` is finished: id -> its records."""
        deadline = time.time() + timeout
        while True:
            records = {i: [j for j in self.jobs() if i in (j.get("JobId"), j.get("ArrayJobId"))] for i in ids}
            if all(r and all(j["JobState"] in TERMINAL for j in r) for r in records.values()):
                return records
            if time.time() > deadline:
                raise AssertionError(f"jobs not finished after {timeout} s: "
                                     f"{ {i: [j['JobState'] for j in r] for i, r in records.items()} }\n{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.dir.glob("**/*.log")) + sorted(self.dir.glob("*.stdout")))

    def stop(self) -> None:
        """Cancel every job, stop the daemons this cluster started (SIGKILL what lingers), remove its folder."""
        try:
            subprocess.run(["scancel", "--partition", self.partition], env=self.env, capture_output=True, timeout=30)
            deadline = time.time() + 30
            while time.time() < deadline and any(j.get("JobState") in ("RUNNING", "COMPLETING") for j in self.jobs()):
                time.sleep(0.5)
        except Exception:  # noqa: BLE001 -- shutting down anyway
            pass
        for p in reversed(self.procs):  # slurmd, slurmctld, munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _states(records: dict[str, list[dict[str, str]]], jobs: dict[str, str]) -> dict[str, list[str]]:
    return {name: sorted(j["JobState"] for j in records[i]) for name, i in jobs.items()}


@pytest.mark.slow
@needs_cluster
def test_smoke_pipeline_on_slurm_equals_the_local_run(cluster, smoke_runs, tmp_path):
    """Stages 01-02 of the smoke set (00 copied from the local run) as a chain of jobs, each with a job array
    of two shards; the outputs must equal the local run's."""
    local, runs = smoke_runs / "smoke", tmp_path / "runs"
    copy_stages(local, runs, "00_zoo_and_tasks")
    t0 = time.time()
    jobs = cluster.submit(runs, "params/smoke.yaml", "--until", "02_model_vectors", "--shards", "2")
    assert list(jobs) == ["01_groundtruth-shards", "01_groundtruth", "02_model_vectors-shards", "02_model_vectors"]
    records = cluster.wait(list(jobs.values()), timeout=1200)
    (runs / "slurm_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    states = _states(records, jobs)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((runs / "smoke/logs").glob("*.out")))
    assert states == {"01_groundtruth-shards": ["COMPLETED"] * 2, "01_groundtruth": ["COMPLETED"],
                      "02_model_vectors-shards": ["COMPLETED"] * 2, "02_model_vectors": ["COMPLETED"]}, f"{states}\n{logs}"

    # logs are named with the job id, and with the array job id and task index
    run = runs / "smoke"
    for name, i in jobs.items():
        if name.endswith("-shards"):
            for task in (0, 1):
                log = run / "logs" / f"ptmrec-smoke-{name[:-7]}-shard-{i}_{task}.out"
                assert f"shard {task}/2 done" in log.read_text(), log
        else:
            assert f"{name}: done in" in (run / "logs" / f"ptmrec-smoke-{name}-{i}.out").read_text()

    # the array tasks did the work: every model's part was written before the stage's notebook job started
    starts = {name: min(j["StartTime"] for j in records[i]) for name, i in jobs.items()}
    for stage, pattern in (("01_groundtruth", "parts/*.csv"), ("02_model_vectors", "parts/*/*.npz")):
        parts = sorted((run / stage).glob(pattern))
        assert parts, f"{stage}: no parts"
        started = time.mktime(time.strptime(starts[stage], "%Y-%m-%dT%H:%M:%S"))
        assert max(p.stat().st_mtime for p in parts) < started + 1, f"{stage}: its notebook computed parts itself"

    # outputs equal the local run's
    key = ["model_id", "task_id", "method", "seed"]
    got = pd.read_csv(run / "01_groundtruth/performance.csv").drop(columns="seconds").sort_values(key)
    want = pd.read_csv(local / "01_groundtruth/performance.csv").drop(columns="seconds").sort_values(key)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    for csv in ("01_groundtruth/spread.csv", "01_groundtruth/noise.csv", "02_model_vectors/skipped.csv",
                "02_model_vectors/designs.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(run / csv), pd.read_csv(local / csv), obj=csv)
    ids, vectors = load_vectors(run / "02_model_vectors")
    want_ids, want_vectors = load_vectors(local / "02_model_vectors")
    assert list(ids) == list(want_ids) and np.array_equal(vectors, want_vectors)
    for stage in ("01_groundtruth", "02_model_vectors"):
        got, want = read_json(run / stage / "metrics.json"), read_json(local / stage / "metrics.json")
        summary = {k for k, v in want.items() if isinstance(v, (int, float)) and "second" not in k and k != "speed"}
        assert {k: got[k] for k in summary} == {k: want[k] for k in summary}, stage
        assert read_json(run / stage / "_stage.json")["key"] == read_json(local / stage / "_stage.json")["key"]
    assert (run / "report" / "index.html").exists()  # each stage job's run() refreshes the HTML report


@pytest.mark.slow
@needs_cluster
def test_a_failing_notebook_fails_its_job_and_its_dependants_never_run(cluster, smoke_runs, tmp_path):
    local, runs = smoke_runs / "smoke", tmp_path / "runs"
    copy_stages(local, runs, "00_zoo_and_tasks", "01_groundtruth")
    (runs / "smoke/01_groundtruth/performance.csv").unlink()  # notebook 02 reads it in its first cells
    jobs = cluster.submit(runs, "params/smoke.yaml", "--until", "03_autoencoder", "--shards", "2")
    assert list(jobs) == ["02_model_vectors-shards", "02_model_vectors", "03_autoencoder"]
    records = cluster.wait(list(jobs.values()), timeout=600)
    states = _states(records, jobs)
    assert states == {"02_model_vectors-shards": ["COMPLETED"] * 2,  # the shards read only the zoo
                      "02_model_vectors": ["FAILED"], "03_autoencoder": ["CANCELLED"]}, states
    dependant = records[jobs["03_autoencoder"]][0]
    assert dependant["Reason"] == "DependencyNeverSatisfied", dependant
    assert dependant.get("NodeList", "") in ("", "(null)") and "BatchHost" not in dependant, dependant  # never placed
    log = (runs / "smoke/logs" / f"ptmrec-smoke-02_model_vectors-{jobs['02_model_vectors']}.out").read_text()
    assert "FAILED: notebook" in log and "02_model_vectors.ipynb" in log and "performance.csv" in log
    assert not (runs / "smoke/logs" / f"ptmrec-smoke-03_autoencoder-{jobs['03_autoencoder']}.out").exists()
    assert not (runs / "smoke/03_autoencoder").exists() and not (runs / "smoke/02_model_vectors/_stage.json").exists()


@needs_cluster
def test_bad_parameters_submit_nothing(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("zoo:\n  no_such_key: 1\n")
    before = len(cluster.jobs())
    r = cluster.run(str(REPO / "slurm" / "submit.sh"), str(bad), "--cluster", PROFILE, check=False,
                    env={"PTMREC_RUNS": str(tmp_path / "runs")})
    assert r.returncode != 0 and "no_such_key" in r.stderr
    assert len(cluster.jobs()) == before


# ----------------------------------------------------------------------- without a cluster


def test_shards_cover_every_model_once():
    rows = pd.DataFrame({"model_id": [f"m{i}" for i in range(8)]})
    shards = [pipeline.shard_rows(rows, i, 3).model_id.tolist() for i in range(3)]
    assert sorted(sum(shards, [])) == rows.model_id.tolist() and shards[0] == ["m0", "m3", "m6"]
    with pytest.raises(ValueError):
        pipeline.shard_rows(rows, 3, 3)
    assert set(pipeline.list_sharders()) >= {"01_groundtruth", "02_model_vectors"}


def test_sharded_extraction_equals_one_pass(tmp_path):
    """extract_parts over two shards, then extract_zoo(parts=...): the same vectors and skips as one pass."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        (tmp_path / "zoo" / f"m{i}").mkdir(parents=True)
        save_file({"a.weight": rng.normal(size=(8 + i, 4)).astype(np.float32), "a.bias": np.zeros(8 + i, np.float32),
                   "b.weight": rng.normal(size=(3, 8 + i)).astype(np.float32)},
                  str(tmp_path / "zoo" / f"m{i}" / "model.safetensors"))
        rows.append(dict(model_id=f"m{i}", path=f"m{i}"))
    (tmp_path / "zoo" / "bad").mkdir()
    (tmp_path / "zoo" / "bad" / "model.safetensors").write_bytes(b"12345678")
    index = pd.DataFrame(rows[:2] + [dict(model_id="bad", path="bad")] + rows[2:])
    parts = tmp_path / "parts"
    for i in range(2):
        extract.extract_parts(pipeline.shard_rows(index, i, 2), tmp_path / "zoo", 512, parts)
    assert extract.extract_parts(index, tmp_path / "zoo", 512, parts) == 0  # all there: nothing read again
    for name in extract.list_extractors():
        p = ExtractParams(extractor=name, length=512)
        one = extract.extract_zoo(index, tmp_path / "zoo", p, tmp_path / "one" / name, progress=False)
        sharded = extract.extract_zoo(index, tmp_path / "zoo", p, tmp_path / "sharded" / name, progress=False,
                                      parts=parts / name)
        assert one == sharded and one[1][0][0] == "bad"
        a, b = load_vectors(tmp_path / "one" / name), load_vectors(tmp_path / "sharded" / name)
        assert list(a[0]) == list(b[0]) and np.array_equal(a[1], b[1])


def test_submit_dry_run_follows_the_stage_graph_and_the_profile(tmp_path):
    env = {**os.environ, "PTMREC_RUNS": str(tmp_path / "runs"), "PTMREC_ACCOUNT": "abc123-gpu"}
    r = subprocess.run([str(REPO / "slurm/submit.sh"), "params/smoke.yaml", "--cluster", "anvil", "--dry-run"],
                       capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    jobs = dict(line.split() for line in r.stdout.splitlines())
    stages = pipeline.list_stages()
    assert [n for n in jobs if not n.endswith("-shards")] == stages
    assert [n[:-7] for n in jobs if n.endswith("-shards")] == pipeline.list_sharders()
    sbatch = {line.split("--job-name=ptmrec-smoke-")[1].split()[0]: line for line in r.stderr.splitlines()
              if line.startswith("sbatch ")}
    for line in sbatch.values():
        for opt in ("--partition=gpu", "--account=abc123-gpu", "--gres=gpu:1", "--cpus-per-task=8",
                    "--kill-on-invalid-dep=yes", f"--output={tmp_path}/runs/smoke/logs/%x-"):
            assert opt in line, (opt, line)
    for name in stages:
        deps = [f"<{d}>" for d in pipeline.STAGES[name].depends]
        if name in pipeline.SHARDERS:
            assert f"--dependency=afterok:<{name}-shards>" in sbatch[name]
            assert "--array=0-7%4" in sbatch[f"{name}-shard"] and "%x-%A_%a.out" in sbatch[f"{name}-shard"]
            line = sbatch[f"{name}-shard"]
        else:
            line = sbatch[name]
        assert (f"--dependency=afterok:{':'.join(deps)}" in line) if deps else "--dependency" not in line, line
    env.pop("PTMREC_ACCOUNT")
    r = subprocess.run([str(REPO / "slurm/submit.sh"), "params/smoke.yaml", "--cluster", "anvil", "--dry-run"],
                       capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 2 and "needs an account" in r.stderr

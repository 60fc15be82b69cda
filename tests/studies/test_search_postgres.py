"""`loraclf search` on a real PostgreSQL server: a throwaway cluster (Debian's initdb and pg_ctl) on
127.0.0.1 for this module, and real `loraclf search` processes against it. Two workers share one
study (every trial number once, exactly `trials` of them), a worker SIGKILLed mid-trial loses nothing
(the other worker fails its trial on the missed heartbeats and reruns it), and two workers choose the
same best config as one worker over the same grid.

Without PostgreSQL's binaries (or psycopg) the server tests skip; with LORACLF_REQUIRE_POSTGRES=1
(.ci/run sets it) they fail instead."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from loraclf.errors import ConfigError, EnvironmentError_
from loraclf.studies.search import run_search

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ENV.pop("LORACLF_FAULT", None)
GRID = {"train.lr": [0.005, 0.001], "lora.r": [2, 4]}  # 4 points


def _absent(why: str) -> None:
    if os.environ.get("LORACLF_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{why}, and LORACLF_REQUIRE_POSTGRES=1 makes that a failure (apt-get install postgresql)")
    pytest.skip(why)


def _bindir() -> Path:
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(re.sub(r"\D", "", p) or 0))
    if not found:
        _absent("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster in a fresh temp folder, on 127.0.0.1 only, with database `loraclf`; its URL.
    As root, the server runs as the `postgres` user (initdb refuses root), which must own the folder:
    it lies directly under /tmp because pytest's tmp folders are closed to other users."""
    pytest.importorskip("optuna")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _absent("psycopg is not installed (pip install 'loraclf[search]')")
    bindir = _bindir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _absent("running as root and there is no `postgres` user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="loraclf-pg-"))
    data, sock, port = root / "data", root / "sock", _free_port()
    sock.mkdir()
    if as_user:
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)

    def pg(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*as_user, str(bindir / tool), *args], capture_output=True, text=True, timeout=90,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode:
            log = (root / "server.log").read_text()[-2000:] if (root / "server.log").exists() else ""
            raise AssertionError(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}\n{log}")
        return proc

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start", "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=60")
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "loraclf")
        yield f"postgresql://postgres@127.0.0.1:{port}/loraclf"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def _spec(tiny_models, synth_dir, root: Path, url: str, name: str, **extra) -> str:
    """A search file: the 4-point grid on the tiny BERT, validation loss (no ties) as the objective."""
    config: dict = {}
    sets = {"train.epochs": 0.5, "train.num_threads": 1}
    for item in tiny_overrides(tiny_models["bert"], synth_dir, root, **sets):
        k, v = item.split("=", 1)
        sec, _, field = k.partition(".")
        if field:
            config.setdefault(sec, {})[field] = yaml.safe_load(v)
    config["report"] = {"enabled": False, "trackers": "none"}
    spec = {"config": config, "space": GRID, "trials": 4, "sampler": "grid", "pruner": "none", "metric": "loss",
            "storage": url, "study_name": name, "output_dir": str(root / name), **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def _start(spec: str, log: Path, fault: str | None = None) -> subprocess.Popen:
    env = {**ENV, "LORACLF_FAULT": fault} if fault else ENV
    with open(log, "w") as fh:  # a file, not a pipe: nobody reads while the worker runs
        return subprocess.Popen([sys.executable, "-m", "loraclf", "search", spec, "--quiet"], env=env,
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"worker still running after {timeout} s:\n{log.read_text()[-3000:]}") from None


def _ok(proc: subprocess.Popen, log: Path) -> None:
    rc = _wait(proc, log)
    assert rc == 0, log.read_text()[-3000:]


def _trials(url: str, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return sorted(optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False), key=lambda t: t.number)


def _body(best_yaml: Path) -> str:
    """best.yaml without its header comment (which names the trial and the storage)."""
    return "\n".join(line for line in best_yaml.read_text().splitlines() if not line.startswith("#"))


@pytest.fixture(scope="module")
def grid_runs(postgres, tiny_models, synth_dir, tmp_path_factory):
    """The grid searched by two workers started together ("pair"), then by one worker ("solo")."""
    root = tmp_path_factory.mktemp("pg_grid")
    pair, solo = (_spec(tiny_models, synth_dir, root, postgres, n) for n in ("pair", "solo"))
    t0 = time.monotonic()
    logs = [root / f"pair-{i}.log" for i in range(2)]
    workers = [_start(pair, log) for log in logs]
    codes = [_wait(proc, log) for proc, log in zip(workers, logs)]  # both ended before the server can go
    for rc, log in zip(codes, logs):
        assert rc == 0, log.read_text()[-3000:]
    t_pair = time.monotonic() - t0
    _ok(_start(solo, root / "solo.log"), root / "solo.log")
    print(f"grid: two workers {t_pair:.1f} s, one worker {time.monotonic() - t0 - t_pair:.1f} s")
    return root, _trials(postgres, "pair"), _trials(postgres, "solo")


def test_two_workers_share_one_study(grid_runs):
    root, trials, _ = grid_runs
    assert [t.number for t in trials] == [0, 1, 2, 3]  # exactly `trials`, each number once
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials of the one study
    # the grid went round once: every point, none twice
    assert sorted((t.params["train.lr"], t.params["lora.r"]) for t in trials) == [
        (0.001, 2), (0.001, 4), (0.005, 2), (0.005, 4)]
    for t in trials:  # each trial's run finished in the shared output folder
        assert (Path(t.user_attrs["run_dir"]) / "metrics.json").exists()
    assert "Trials: 4 complete, 0 pruned, 0 failed, 0 running" in (root / "pair" / "results.md").read_text()


def test_two_workers_choose_what_one_worker_chooses(grid_runs):
    root, pair, solo = grid_runs
    by_params = [{tuple(sorted(t.params.items())): t.value for t in ts} for ts in (pair, solo)]
    assert by_params[0] == by_params[1]  # the same configs, scored alike to the last bit
    best = [min(ts, key=lambda t: t.value) for ts in (pair, solo)]
    assert best[0].params == best[1].params
    assert _body(root / "pair" / "best.yaml") == _body(root / "solo" / "best.yaml")


def test_a_killed_worker_loses_no_trial(postgres, tiny_models, synth_dir, tmp_path):
    """Workers A and B start together; A is SIGKILLed in the middle of its first trial. B goes on, and
    once A's trial has missed its heartbeats for `grace_period` B fails it, reruns its config and completes
    the study: `trials` complete trials, none lost, and B returns only then."""
    spec = _spec(tiny_models, synth_dir, tmp_path, postgres, "killed", heartbeat=1, grace_period=2)
    logs = {w: tmp_path / f"{w}.log" for w in "ab"}
    a, b = _start(spec, logs["a"], fault="train.step:3"), _start(spec, logs["b"])
    assert _wait(a, logs["a"]) == -signal.SIGKILL, logs["a"].read_text()[-3000:]
    _ok(b, logs["b"])
    trials = _trials(postgres, "killed")
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]  # each number once: 4 asked, 1 rerun
    states = [t.state.name for t in trials]
    assert sorted(states) == ["COMPLETE"] * 4 + ["FAIL"]  # what was asked: the failure is not counted
    killed = trials[states.index("FAIL")]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state.name == "COMPLETE" and retry.params == killed.params  # the lost config, rerun
    assert killed.user_attrs["worker"].endswith(f":{a.pid}")
    assert {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"} == {retry.user_attrs["worker"]}
    assert retry.user_attrs["worker"].endswith(f":{b.pid}")  # A ran nothing to the end
    grid = sorted((t.params["train.lr"], t.params["lora.r"]) for t in trials if t.state.name == "COMPLETE")
    assert grid == [(0.001, 2), (0.001, 4), (0.005, 2), (0.005, 4)]  # the whole grid, once
    assert "Trials: 4 complete, 0 pruned, 1 failed, 0 running" in (tmp_path / "killed" / "results.md").read_text()


# ----------------------------------------------------------------------------- no server needed


def test_a_postgres_url_without_the_driver_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"space": {"train.lr": [0.1, 0.2]}, "metric": "accuracy",
                                 "storage": "postgresql://me:secret@127.0.0.1:9/optuna", "output_dir": str(tmp_path)}))
    pytest.importorskip("optuna")
    with pytest.raises(EnvironmentError_) as e:
        run_search(f, quiet=True)
    msg = str(e.value)
    assert msg == ("storage postgresql://me:***@127.0.0.1:9/optuna: its database driver psycopg is not installed: "
                   "pip install 'loraclf[search]' (it brings psycopg[binary])")


@pytest.mark.parametrize("space,trials,needle", [
    ({"train.lr": {"low": 0.1, "high": 0.2}}, 1, "sampler grid: space 'train.lr' must be a list of choices"),
    ({"train.lr": [0.1, 0.2], "lora.r": {"choices": [2, 4]}}, 5, "the space has 4 points; trials must be <= 4, got 5"),
])
def test_grid_sampler_needs_choices_and_enough_points(tmp_path, space, trials, needle):
    pytest.importorskip("optuna")
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"space": space, "trials": trials, "sampler": "grid", "metric": "accuracy",
                                 "output_dir": str(tmp_path / "o")}))
    with pytest.raises(ConfigError, match=re.escape(needle)):
        run_search(f, quiet=True)


def test_heartbeat_and_grace_period_reach_the_storage(tmp_path):
    pytest.importorskip("optuna")
    from loraclf.studies.search import _make_storage, load_search

    def search(**extra):
        f = tmp_path / "s.yaml"
        f.write_text(yaml.safe_dump({"space": {"train.lr": [0.1, 0.2]}, "metric": "accuracy",
                                     "output_dir": str(tmp_path / "o"), **extra}))
        return load_search(f)

    assert (search().heartbeat, search().grace_period) == (60, 180)
    assert (search(heartbeat=5).heartbeat, search(heartbeat=5).grace_period) == (5, 15)  # 3 x heartbeat
    s = search(heartbeat=2, grace_period=7)
    st = _make_storage(s.storage, s.heartbeat, s.grace_period)
    assert (st.heartbeat_interval, st.grace_period) == (2, 7)

"""``privfed run --engine flower`` on one machine: a SuperLink on loopback (TLS with a one-run CA, SuperNode
authentication with a registered key per node), and per site a
SuperNode (its own ``--port``) and the site's own process, all separate OS processes started with the same commands
a real deployment uses (README, "Deploying across sites"); then ``flwr run`` submits the run. Every process it
started is stopped at the end, whatever happened.

Offline by construction: ``FLWR_DISABLE_UPDATE_CHECK=1``, ``--disable-runtime-dependency-installation``, no Ray.
Site processes run torch with one thread each (they train at the same time; see the README's note on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from privfed.errors import RunDirError
from privfed.flower import APP_DIR, SOCKET_NAME
from privfed.flower.tls import make_loopback_tls, make_node_key
from privfed.parties.policy import SitePolicy

CONNECTION = "privfed-loopback"


class FlowerError(RunDirError):
    """The Flower deployment could not be started, or its run failed (the message names the log to read)."""


def _exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FlowerError(f"{name} not found: install flwr (pip install -c constraints.txt -e .)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerError(f"flower-superlink exited ({proc.returncode}); see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FlowerError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s; see {log}")


class LoopbackFederation:
    """The processes of one loopback Flower federation for the run in `run_dir`."""

    def __init__(self, run_dir: str | Path, *, sites: dict[int, Path], stage_timeout_s: float = 60.0,
                 train_timeout_s: float = 1800.0, site_env: dict[str, dict[str, str]] | None = None,
                 server_env: dict[str, str] | None = None, extra_nodes: dict[str, Path] | None = None,
                 note: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.sites = {c: Path(d).resolve() for c, d in sites.items()}
        self.stage_timeout_s, self.train_timeout_s = stage_timeout_s, train_timeout_s
        self.site_env = site_env or {}
        self.server_env = server_env or {}
        self.extra_nodes = extra_nodes or {}       # name -> site dir of a node whose site process runs elsewhere
        self.note = note
        self.logs = self.run_dir / "flower" / "logs"
        self.home = self.run_dir / "flower" / "home"
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = 0

    # -- environment -------------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_HOME": str(self.home), "PYTHONUNBUFFERED": "1",
                    # how often SuperExec looks for a ServerApp/ClientApp to start (Flower's default: 1 s)
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"})
        env.update(extra)
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            # its own process group, so that stopping it also stops what it started (ServerApp, ClientApps)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=self.run_dir)
        self.procs[name] = proc
        return proc

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.port = free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        # TLS even on loopback: a one-run CA and a SuperLink certificate for 127.0.0.1 (RUN_DIR/flower/tls)
        self.tls = make_loopback_tls(self.run_dir / "flower" / "tls")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.tls.ca_cert}"\n')
        link = self._spawn("superlink", [_exe("flower-superlink"), "--ssl-ca-certfile", str(self.tls.ca_cert),
                                         "--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key),
                                         "--enable-supernode-auth", "--disable-runtime-dependency-installation",
                                         "--port", str(self.port)],
                           self.env(**self.server_env))
        _wait_port(self.port, 60, link, self.logs / "superlink.log")
        for name in [*self.extra_nodes, *(str(c) for c in self.sites)]:
            self._register_node(name)            # only registered SuperNodes may connect (Flower node auth)
        for name, sdir in self.extra_nodes.items():
            self.start_supernode(name, sdir)         # a node whose site process the caller runs itself
        nodes = {str(c): d for c, d in self.sites.items()}
        for name, sdir in nodes.items():
            node = self.start_supernode(name, sdir)
            site_id = SitePolicy.load(sdir).site_id
            extra = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PRIVFED_FLOWER_NODE_PID": str(node.pid),
                     **self.site_env.get(name, {})}
            self._spawn(f"site-{name}", [sys.executable, "-m", "privfed", "site", "serve", str(sdir),
                                         "--run-dir", str(self.run_dir), "--site-id", str(site_id)],
                        self.env(**extra))
        self._wait_sites(nodes)

    def _register_node(self, name: str) -> None:
        _, pub = make_node_key(self.run_dir / "flower" / "nodes", name)
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run([_exe("flwr"), "supernode", "register", str(pub), CONNECTION, "--format", "json"],
                                 capture_output=True, text=True, env=self.env(), timeout=60)
            if out.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise FlowerError(f"flwr supernode register {pub} failed: {(out.stdout + out.stderr)[-500:]}")
            time.sleep(1)                        # the SuperLink's control API may still be starting

    def start_supernode(self, name: str, site_dir: Path) -> subprocess.Popen:
        key, _ = make_node_key(self.run_dir / "flower" / "nodes", name)
        return self._spawn(f"supernode-{name}", [
            _exe("flower-supernode"), "--root-certificates", str(self.tls.ca_cert),
            "--auth-supernode-private-key", str(key), "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(free_port()), "--node-config", f'site-dir="{site_dir}"'], self.env())

    def _wait_sites(self, nodes: dict[str, Path], timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = dict(nodes)
        while waiting and time.monotonic() < deadline:
            for name, sdir in list(waiting.items()):
                proc = self.procs[f"site-{name}"]
                if proc.poll() is not None:
                    raise FlowerError(f"site process {name} exited ({proc.returncode}): "
                                      f"{_tail(self.logs / f'site-{name}.log')}")
                if (sdir / SOCKET_NAME).exists():
                    del waiting[name]
            time.sleep(0.3)
        if waiting:
            raise FlowerError(f"site processes {sorted(waiting)} not ready within {timeout_s:.0f} s")

    def submit(self) -> str:
        """``flwr run`` the privfed app on this federation; returns Flower's run id."""
        conf = (f'run-dir="{self.run_dir}" stage-timeout={float(self.stage_timeout_s)} '
                f'train-timeout={float(self.train_timeout_s)}')
        out = subprocess.run([_exe("flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", conf,
                              "--format", "json"], capture_output=True, text=True, env=self.env(), timeout=120)
        try:
            reply = json.loads(out.stdout[out.stdout.index("{"):])
        except ValueError:
            reply = {}
        if out.returncode != 0 or not reply.get("success"):
            raise FlowerError(f"flwr run failed: {(out.stdout + out.stderr).strip()[-800:]}")
        return str(reply.get("run-id"))

    def run_info(self) -> dict:
        """Flower's record of the (single) run on this SuperLink (``flwr ls``): status, network traffic, …"""
        out = subprocess.run([_exe("flwr"), "ls", CONNECTION, "--format", "json"], capture_output=True, text=True,
                             env=self.env(), timeout=60)
        try:
            runs = json.loads(out.stdout[out.stdout.index("{"):]).get("runs", [])
        except ValueError:
            return {}
        return runs[-1] if runs else {}

    def status(self) -> str:
        """Flower's status of the run, e.g. ``running`` or ``finished:failed`` (``unknown`` if unreadable)."""
        return self.run_info().get("status", "unknown")

    def wait(self, *, on_round: Callable[[dict], None] | None = None, poll_s: float = 1.0,
             liveness_every_s: float = 20.0) -> dict:
        """Wait for the ServerApp's status file; follow metrics.jsonl for progress. A ServerApp that dies without
        writing one (killed) is detected through Flower's own run status."""
        status_path = self.run_dir / "flower" / "status.json"
        metrics = self.run_dir / "metrics.jsonl"
        seen, last_check = 0, time.monotonic()
        while True:
            if metrics.exists() and on_round is not None:
                lines = metrics.read_text().splitlines()
                for line in lines[seen:]:
                    on_round(json.loads(line))
                seen = max(seen, len(lines))
            if status_path.exists():
                return json.loads(status_path.read_text())
            if time.monotonic() - last_check > liveness_every_s:
                last_check = time.monotonic()
                state = self.status()
                if state.startswith("finished") and not status_path.exists():
                    time.sleep(2)
                    if not status_path.exists():
                        return {"state": "failed", "error": "ServerAppDied",
                                "reason": f"the ServerApp process ended ({state}) without finishing the run"}
            time.sleep(poll_s)

    def stop(self) -> None:
        """Stop every process this federation started (SIGTERM to its group, then SIGKILL)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        for sdir in self.sites.values():
            (sdir / SOCKET_NAME).unlink(missing_ok=True)

    def __enter__(self) -> "LoopbackFederation":
        # a SIGTERM to this process must still stop the federation's processes (they run in their own sessions)
        self._old_term = None
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, _terminate)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _tail(path: Path, n: int = 600) -> str:
    try:
        return " ".join(path.read_text(errors="replace")[-n:].split())
    except OSError:
        return "(no log)"


def check_supported(cfg) -> None:
    """FlowerError for a configuration the Flower engine does not run (checked before anything is written)."""
    if cfg.secure_agg.mode == "ckks":
        raise FlowerError("--engine flower does not run CKKS yet: its key holder must be a deployed party of its "
                          "own; use --secure-agg secagg+ (or the in-process engine)")


def run_loopback(fr, *, on_round: Callable[[dict], None] | None = None, note: Callable[[str], None] = print,
                 stage_timeout_s: float = 60.0, train_timeout_s: float = 1800.0,
                 site_env: dict[str, dict[str, str]] | None = None, server_env: dict[str, str] | None = None,
                 extra_nodes: dict[str, Path] | None = None) -> dict:
    """Run (or resume) the federation of `fr` (a created or resumed :class:`FederatedRun`) on a loopback Flower
    deployment; returns the ServerApp's final status. Raises FlowerError if the run did not finish."""
    check_supported(fr.cfg)
    fr.server_key()
    fr.enroll_sites()
    root = fr.dir.root
    (root / "flower" / "status.json").unlink(missing_ok=True)
    sites = {c: root / "sites" / str(c) for c in range(fr.cfg.fed.clients)
             if (root / "sites" / str(c) / "identity.key").exists()}
    for c in sorted(set(range(fr.cfg.fed.clients)) - set(sites)):
        note(f"site {c} has no identity key here: it is not started (the run goes on without it)")
    with LoopbackFederation(root, sites=sites, stage_timeout_s=stage_timeout_s, train_timeout_s=train_timeout_s,
                            site_env=site_env, server_env=server_env, extra_nodes=extra_nodes, note=note) as fed:
        fed.start()
        note(f"Flower federation up: SuperLink 127.0.0.1:{fed.port}, {len(sites)} SuperNode(s); logs in {fed.logs}")
        fed.submit()
        status = fed.wait(on_round=on_round)
        status["flower_traffic"] = fed.run_info().get("network-traffic", {})   # Flower's own byte count
    if status.get("state") != "finished":
        raise FlowerError(f"the Flower run did not finish ({status.get('error')}: {status.get('reason')}); logs in "
                          f"{root / 'flower' / 'logs'}; continue with privfed run --resume {root} --engine flower")
    return status


def prepare_run(cfg, out: str | Path, *, site_keys: dict[int, Path] | None = None):
    """A new run directory for a Flower deployment: config.toml, the server's ledger key (keys/ledger.key, 0600;
    keys/ledger.pub) and the roster. With `site_keys` (site id -> that site's ``identity.pub``, sent by the site
    after ``privfed site init``) the roster pins those keys; without, every site is enrolled locally under
    ``RUN_DIR/sites/<id>/`` (one machine). Nothing is written on bad input."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from privfed.errors import ConfigError
    from privfed.federation.runner import FederatedRun
    from privfed.parties.identity import Roster

    keys = {}
    if site_keys:
        if sorted(site_keys) != list(range(cfg.fed.clients)):
            raise ConfigError(f"--site-key must name every site 0..{cfg.fed.clients - 1} exactly once; got "
                              f"{sorted(site_keys)}")
        for sid, path in site_keys.items():
            try:
                key = load_pem_public_key(Path(path).read_bytes())
            except (OSError, ValueError) as e:
                raise ConfigError(f"site {sid}: cannot read its public key {path}: {e}") from None
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"site {sid}: {path} is not an Ed25519 public key (privfed site init writes one)")
            keys[sid] = key
    fr = FederatedRun.create(cfg, out)
    fr.server_key()
    if keys:
        Roster(keys).save(fr.dir.root / "roster.json")
    else:
        fr.enroll_sites()
    return fr


def wait_for_run(run_dir: str | Path, *, timeout_s: float | None = None, poll_s: float = 2.0) -> dict:
    """Block until the ServerApp of the run in `run_dir` wrote its final status (finished or failed)."""
    path = Path(run_dir) / "flower" / "status.json"
    t0 = time.monotonic()
    while not path.exists():
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise FlowerError(f"no final status in {path} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return json.loads(path.read_text())

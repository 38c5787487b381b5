"""`lab-server`: an MLflow tracking server on PostgreSQL, with artifacts served through it, for clusters.

    lab-server                                           # 127.0.0.1:5000, postgres@127.0.0.1:5432/mlflow
    lab-server --host 0.0.0.0 --port 5000 --backend-store-uri postgresql+psycopg://mlflow@db:5432/mlflow \
        --artifacts-destination /shared/mlartifacts

Before serving it creates the database if it is missing and creates (or checks) MLflow's schema once, so the
server's worker processes and the runs never race in migrations; it does the same for the Optuna database next to
it. It waits until the server answers, then prints the tracking URI to give runs (``tracking=server`` reads
MLFLOW_TRACKING_URI) and the storage URL to give ``lab-study --storage``. Ctrl-C (or SIGTERM) stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_BACKEND = "postgresql+psycopg://postgres@127.0.0.1:5432/mlflow"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


class ServerError(RuntimeError):
    """lab-server cannot start; the message names the URL or file and the fix."""


@dataclass(frozen=True)
class ServerConfig:
    backend_store_uri: str = DEFAULT_BACKEND
    artifacts_destination: Path = Path("mlartifacts")
    host: str = "127.0.0.1"
    """Bound interface: loopback unless told otherwise (another machine reaches it with --host 0.0.0.0)."""
    port: int = 5000
    workers: int = 4
    """mlflow server worker processes; each holds a small pool of PostgreSQL connections."""
    optuna_storage: Optional[str] = None
    """None: a database named <backend db>_optuna on the same PostgreSQL server."""
    allowed_hosts: Optional[str] = None
    """Host headers the server accepts (MLflow refuses others); None: MLflow's defaults plus this machine's names."""

    def __post_init__(self) -> None:
        from tracking.store import is_postgres

        if not is_postgres(self.backend_store_uri):
            raise ServerError(f"--backend-store-uri {self.backend_store_uri!r}: lab-server keeps runs in "
                              "PostgreSQL; give postgresql+psycopg://USER@HOST:PORT/DB (for one machine without a "
                              "server, use the default tracking=sqlite)")
        if self.optuna_storage is not None and not is_postgres(self.optuna_storage):
            raise ServerError(f"--optuna-storage {self.optuna_storage!r}: give a PostgreSQL URL "
                              "(postgresql+psycopg://USER@HOST:PORT/DB), or leave it out for <backend db>_optuna")
        if not 0 < self.port < 65536:
            raise ServerError(f"--port {self.port}: use a TCP port in 1..65535")
        if self.workers < 1:
            raise ServerError(f"--workers {self.workers}: use at least 1")

    @property
    def optuna_url(self) -> str:
        if self.optuna_storage:
            return self.optuna_storage
        from sqlalchemy.engine import make_url

        url = make_url(self.backend_store_uri)
        return url.set(database=f"{url.database}_optuna").render_as_string(hide_password=False)

    def argv(self) -> list[str]:
        """lab-server's arguments for this config."""
        return ["--backend-store-uri", self.backend_store_uri, "--artifacts-destination",
                str(self.artifacts_destination), "--host", self.host, "--port", str(self.port),
                "--workers", str(self.workers),
                *(["--optuna-storage", self.optuna_storage] if self.optuna_storage else []),
                *(["--allowed-hosts", self.allowed_hosts] if self.allowed_hosts else [])]

    @property
    def tracking_uri(self) -> str:
        """What runs on other machines use: this host's name when bound to every interface."""
        return _http(host_name() if self.host in ("0.0.0.0", "::") else self.host, self.port)

    @property
    def local_uri(self) -> str:
        """How this machine reaches the server."""
        return _http("127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host, self.port)


def host_name() -> str:
    """This machine's name as others resolve it (the fully qualified one unless that is only localhost)."""
    fqdn = socket.getfqdn()
    return socket.gethostname() if fqdn.startswith("localhost") else fqdn


def _http(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database of ``url`` if it does not exist; True when it was created."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    from tracking.store import hide_password, libpq_url

    name = make_url(url).database
    try:
        psycopg.connect(libpq_url(url), connect_timeout=5).close()
        return False
    except psycopg.OperationalError as err:
        if f'database "{name}" does not exist' not in str(err):
            u = make_url(url)
            raise ServerError(
                f"PostgreSQL at {hide_password(url)} is not reachable ({' '.join(str(err).split())}). Start "
                f"PostgreSQL on {u.host or 'localhost'}:{u.port or 5432} (e.g. `pg_ctlcluster <version> main "
                "start`) or check the user and its access (pg_hba.conf), or give --backend-store-uri "
                "postgresql+psycopg://USER@HOST:PORT/DB for one that runs") from None
    errors = []
    for maintenance in ("postgres", "template1"):
        try:
            with psycopg.connect(libpq_url(url, maintenance), autocommit=True, connect_timeout=5) as con:
                con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
        except psycopg.errors.DuplicateDatabase:
            return False  # created meanwhile by another lab-server
        except psycopg.Error as err:
            errors.append(f"{maintenance}: {' '.join(str(err).split())}")
    raise ServerError(f"database {name!r} does not exist and could not be created ({'; '.join(errors)}): create it "
                      f"(`createdb {name}`) or give a user allowed to (CREATEDB)")


def init_optuna(url: str) -> None:
    """Optuna's tables, created once here rather than by the first workers racing to create them."""
    import optuna

    optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}).engine.dispose()


def check_port(cfg: ServerConfig) -> None:
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as err:
            raise ServerError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror}): another process listens "
                              "there (if it is a lab-server, give runs its URI), or give --port / --host") from None


def initialise(cfg: ServerConfig) -> list[str]:
    """Databases and schemas (MLflow's, Optuna's) ready before the server starts; what was created, for the log."""
    from tracking.store import hide_password, init_postgres_store

    check_port(cfg)
    created = [hide_password(u) for u in (cfg.backend_store_uri, cfg.optuna_url) if ensure_database(u)]
    try:
        init_postgres_store(cfg.backend_store_uri, artifact_root="mlflow-artifacts:/")
    except Exception as err:  # an out-of-date schema: MLflow's message says to run `mlflow db upgrade`
        raise ServerError(f"MLflow's schema in {hide_password(cfg.backend_store_uri)} is not usable: {err}") from err
    init_optuna(cfg.optuna_url)
    cfg.artifacts_destination.mkdir(parents=True, exist_ok=True)
    return created


def allowed_hosts(cfg: ServerConfig) -> Optional[str]:
    """MLflow rejects Host headers outside localhost and private IPs: add this machine's names when others will
    reach it by name."""
    if cfg.allowed_hosts is not None:
        return cfg.allowed_hosts
    if cfg.host in LOOPBACK:
        return None
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {host_name(), socket.gethostname(), cfg.host} - {"0.0.0.0", "::"}
    return ",".join([*get_default_allowed_hosts(), *sorted(names), *sorted(f"{n}:*" for n in names)])


def server_command(cfg: ServerConfig) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--backend-store-uri", cfg.backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", str(cfg.artifacts_destination.resolve()),
           "--host", cfg.host, "--port", str(cfg.port), "--workers", str(cfg.workers)]
    hosts = allowed_hosts(cfg)
    return cmd + (["--allowed-hosts", hosts] if hosts else [])


def wait_until_up(proc: subprocess.Popen, uri: str, timeout_s: float = START_TIMEOUT_S) -> None:
    from tracking.store import server_health

    deadline = time.monotonic() + timeout_s
    while (reason := server_health(uri, timeout_s=2.0)) is not None:
        if proc.poll() is not None:
            raise ServerError(f"mlflow server exited with status {proc.returncode} before answering (see its log "
                              f"above); is port {uri.rsplit(':', 1)[-1]} already in use? Give --port")
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer at {uri} within {timeout_s:.0f} s ({reason})")
        time.sleep(0.5)


def spawn(cfg: ServerConfig) -> subprocess.Popen:
    """Start ``mlflow server`` (initialised already) in its own process group, so stop() reaches its workers."""
    # MLflow's job runner (GenAI evaluation jobs: eight more processes) is of no use to training runs.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    return subprocess.Popen(server_command(cfg), start_new_session=True, env=env)


def stop(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop the server and its worker processes (its whole process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    try:  # workers outliving their parent (they exit on their own soon after; make sure)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ServerProcess:
    """lab-server as a child process, for tests, benchmarks and notebooks: start, stop (an outage), start again on
    the same port and database."""

    def __init__(self, cfg: ServerConfig, log_path: Path):
        self.cfg, self.log_path = cfg, log_path
        self.proc: Optional[subprocess.Popen] = None
        self.mlflow_pid: Optional[int] = None
        self.start_s = 0.0
        """How long the last start took until the server answered, seconds."""

    @property
    def uri(self) -> str:
        return self.cfg.tracking_uri

    def start(self, timeout_s: float = START_TIMEOUT_S + 60) -> None:
        from tracking.store import server_health

        offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # this start's banner comes after
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tracking.server", *self.cfg.argv()], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while True:
            log_text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            found = [line for line in log_text.splitlines() if "; mlflow server pid " in line]
            if found and server_health(self.cfg.local_uri) is None:
                self.mlflow_pid = int(found[-1].rsplit("mlflow server pid ", 1)[1].rstrip(")"))
                self.start_s = time.monotonic() - t0
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                how = (f"exited with status {self.proc.returncode}" if self.proc.poll() is not None
                       else f"did not answer within {timeout_s:.0f} s")
                self.stop()
                tail = "\n".join(self.log_path.read_text().splitlines()[-20:])
                raise ServerError(f"lab-server {how} (log {self.log_path}):\n{tail}")
            time.sleep(0.5)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S + 10) -> None:
        """SIGTERM to lab-server, which stops mlflow's process group; SIGKILL to both if that hangs."""
        if self.proc is None:
            return
        if self.mlflow_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.mlflow_pid, signal.SIGCONT)  # a frozen server cannot stop
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.mlflow_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.mlflow_pid, signal.SIGKILL)
        self.proc, self.mlflow_pid = None, None

    def crash(self) -> None:
        """SIGKILL the server and its workers at once (a crashed server or machine), then reap lab-server."""
        assert self.mlflow_pid is not None and self.proc is not None, "start() first"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.mlflow_pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S + 10)  # lab-server exits once its server is gone
        self.proc, self.mlflow_pid = None, None

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but never answered (a hung server)."""
        assert self.mlflow_pid is not None, "start() first"
        os.killpg(self.mlflow_pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.mlflow_pid is not None, "start() first"
        os.killpg(self.mlflow_pid, signal.SIGCONT)

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_args(argv: Optional[Sequence[str]] = None) -> ServerConfig:
    ap = argparse.ArgumentParser(prog="lab-server", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--backend-store-uri", default=DEFAULT_BACKEND, help="PostgreSQL database for runs (created "
                    "if missing)")
    ap.add_argument("--artifacts-destination", type=Path, default=Path("mlartifacts"),
                    help="directory for artifacts, served through the server (a shared filesystem is not needed)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 for other machines")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=4, help="server worker processes")
    ap.add_argument("--optuna-storage", default=None,
                    help="Optuna database to create and print (default: <backend db>_optuna on the same server)")
    ap.add_argument("--allowed-hosts", default=None,
                    help="Host headers to accept (default: localhost, private IPs and this machine's names)")
    a = ap.parse_args(argv)
    return ServerConfig(a.backend_store_uri, a.artifacts_destination, a.host, a.port, a.workers, a.optuna_storage,
                        a.allowed_hosts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tracking.store import hide_password

    launched: list[subprocess.Popen] = []
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if not launched:  # still initialising: nothing runs yet
            raise SystemExit(128 + signum)
        # Only signal here: the main thread may be inside proc.wait(), which a second wait would deadlock on.
        pid = launched[0].pid
        os.killpg(pid, signal.SIGTERM)
        timer = threading.Timer(STOP_TIMEOUT_S, lambda: os.killpg(pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    for signum in stop_signals:
        signal.signal(signum, on_signal)
    try:
        cfg = parse_args(argv)
        for db in initialise(cfg):
            print(f"created database {db}", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # no stop between spawning and knowing the pid
        try:
            launched.append(proc := spawn(cfg))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        wait_until_up(proc, cfg.local_uri)
    except ServerError as err:
        if launched:
            stop(launched[0])
        if stopping:
            return 128 + stopping[0]
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri, optuna_url = cfg.tracking_uri, hide_password(cfg.optuna_url)
    print(f"MLflow tracking server at {uri} (runs in {hide_password(cfg.backend_store_uri)}, artifacts in "
          f"{cfg.artifacts_destination.resolve()}; mlflow server pid {proc.pid})\n"
          f"  runs:      export MLFLOW_TRACKING_URI={uri}; lab-train tracking=server ...\n"
          f"  sweeps:    lab-sweep tracking=server ...\n"
          f"  studies:   lab-study --storage {optuna_url} ... tracking=server\n"
          f"  dashboard: lab-dashboard --tracking-uri {uri}\n"
          f"Optuna storage: {optuna_url}", flush=True)
    code = proc.wait()
    stop(proc)
    if stopping:
        return 128 + stopping[0]
    print(f"error: mlflow server exited with status {code}", file=sys.stderr)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())

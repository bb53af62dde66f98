"""A throwaway one-node SLURM cluster on localhost, started from Debian's packages.

Everything but the config lives in one folder: munge key and socket, MariaDB data, state,
logs and the fake GPUs. The config goes to /etc/slurm, where every SLURM command finds it:
Snakemake's SLURM plugin drops SLURM_* variables (SLURM_CONF too) before its inner srun.
A machine with a SLURM config of its own is left alone (``missing()`` says so). Ports are
free ones picked at start. Daemons run in the foreground as children of the test process
(no systemd) and are stopped by pid.
Needs root and the packages that install.sh installs as root.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
           "sinfo", "sacctmgr")
PARTITIONS = ("cpu", "gpu")  # named like a real cluster's, so profiles/slurm serves both
ACCOUNT = "soloist"
CPUS, GPUS = 4, 2
ETC = Path("/etc/slurm")
MARK = "# soloist test cluster: tests/slurm_cluster.py writes and removes this file\n"
CONFS = ("slurm.conf", "gres.conf", "slurmdbd.conf")


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (to run munged, mariadbd and the SLURM daemons)"
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"not installed: {', '.join(absent)} (install.sh installs them as root)"
    for name in CONFS:
        path = ETC / name
        if path.exists() and not path.read_text().startswith(MARK):
            return f"{path} belongs to a real SLURM setup; not touching it"
    port = re.search(r"^SlurmctldPort=(\d+)", _read(ETC / "slurm.conf"), re.M)
    if port and _listening(int(port[1])):
        return "another test session's cluster is up (its slurm.conf is in /etc/slurm)"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = 60) -> None:
    """Poll ``check()`` until true; a daemon that never comes up fails the fixture, with why."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"local SLURM cluster: {what} did not come up in {timeout:.0f} s")
        time.sleep(0.2)


def _ok(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


class Cluster:
    """Start with ``start()``, always ``stop()`` (also after a failed start)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.log = self.root / "log"
        self._procs: list[subprocess.Popen] = []  # in start order

    # -- files ------------------------------------------------------------------------------
    def _write_files(self) -> None:
        r = self.root
        for d in ("log", "state", "spool", "munge", "db", "dev", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # GRES needs character devices; these behave like /dev/null
        for i in range(GPUS):
            dev = r / "dev" / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
        self.ports = {k: _free_port() for k in ("ctld", "slurmd", "dbd", "mysql")}
        munge_socket = r / "munge" / "munge.socket"
        auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
        ETC.mkdir(parents=True, exist_ok=True)
        (ETC / "slurm.conf").write_text(
            MARK +
            "ClusterName=soloist-test\n"
            "SlurmctldHost=localhost\n"
            f"SlurmctldPort={self.ports['ctld']}\nSlurmdPort={self.ports['slurmd']}\n"
            + auth +
            "CredType=cred/munge\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={r}/state\nSlurmdSpoolDir={r}/spool\n"
            f"SlurmctldPidFile={r}/run/slurmctld.pid\nSlurmdPidFile={r}/run/slurmd.pid\n"
            f"SlurmctldLogFile={self.log}/slurmctld.log\nSlurmdLogFile={self.log}/slurmd.log\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
            "JobAcctGatherType=jobacct_gather/none\nMpiDefault=none\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            "DefMemPerCPU=1000\nReturnToService=2\nEnforcePartLimits=ALL\nMinJobAge=300\n"
            # the node claims more than the machine has; nothing here is enforced (task/none)
            "SlurmdParameters=config_overrides\n"
            "GresTypes=gpu\n"
            "AccountingStorageType=accounting_storage/slurmdbd\n"
            # the munge socket for talking to slurmdbd (AuthInfo covers the rest)
            f"AccountingStoragePass={munge_socket}\n"
            f"AccountingStorageHost=localhost\nAccountingStoragePort={self.ports['dbd']}\n"
            "AccountingStoreFlags=job_comment\nAccountingStorageEnforce=associations\n"
            "AccountingStorageTRES=gres/gpu\n"  # sacct then shows the GPUs a job got
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=256000 "
            f"Gres=gpu:{GPUS} State=UNKNOWN\n"
            f"PartitionName={PARTITIONS[0]} Nodes=localhost Default=YES MaxTime=INFINITE "
            "State=UP\n"
            f"PartitionName={PARTITIONS[1]} Nodes=localhost MaxTime=INFINITE State=UP\n")
        (ETC / "gres.conf").write_text(
            MARK + f"Name=gpu File={r}/dev/fakegpu[0-{GPUS - 1}] Flags=nvidia_gpu_env\n")
        dbd = ETC / "slurmdbd.conf"
        dbd.write_text(
            MARK + auth +
            f"DbdHost=localhost\nDbdPort={self.ports['dbd']}\nSlurmUser=root\n"
            "StorageType=accounting_storage/mysql\n"
            f"StorageHost=127.0.0.1\nStoragePort={self.ports['mysql']}\nStorageUser=root\n"
            "StorageLoc=slurm_acct_db\n"
            f"PidFile={r}/run/slurmdbd.pid\nLogFile={self.log}/slurmdbd.log\n")
        dbd.chmod(0o600)  # slurmdbd refuses a readable config (it holds DB credentials)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        (r / "munge").chmod(0o700)

    # -- daemons ----------------------------------------------------------------------------
    def _daemon(self, name: str, *args: str) -> None:
        """Start ``name`` in the foreground as our child, so stop() knows its pid for sure."""
        with open(self.log / f"{name}.out", "ab") as out:
            self._procs.append(subprocess.Popen([name, *args], stdout=out, stderr=out,
                                                stdin=subprocess.DEVNULL,
                                                start_new_session=True))

    def start(self) -> None:
        r, m = self.root, self.root / "munge"
        self._write_files()
        self._daemon("munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                     f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                     f"--log-file={self.log}/munged.log", f"--seed-file={m}/munged.seed")
        # A private MariaDB without grant tables: no users or passwords to set up.
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={r}/db", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       capture_output=True, check=True)
        self._daemon("mariadbd", "--no-defaults", f"--datadir={r}/db", "--user=root",
                     "--skip-grant-tables", "--bind-address=127.0.0.1",
                     f"--port={self.ports['mysql']}", f"--socket={r}/run/mysqld.sock",
                     f"--pid-file={r}/run/mariadbd.pid", f"--log-error={self.log}/mariadbd.log")
        _wait("mariadbd", lambda: _ok("mariadb-admin", "--no-defaults",
                                      f"--socket={r}/run/mysqld.sock", "ping"))
        self._daemon("slurmdbd", "-D")
        _wait("slurmdbd", lambda: _ok("sacctmgr", "-n", "show", "cluster"))
        self._daemon("slurmctld", "-D")
        self._daemon("slurmd", "-D", "-N", "localhost")
        _wait("an idle node", lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, check=True)
        self.run("sacctmgr", "-i", "add", "user", "root", f"DefaultAccount={ACCOUNT}", check=True)

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run(cmd, capture_output=True, text=True, check=check)

    def stop(self) -> None:
        """Cancel what is still queued or running, then stop every daemon started, newest
        first, by pid, checking its name before a kill."""
        if any(Path(p.args[0]).name == "slurmctld" and p.poll() is None for p in self._procs):
            self.run("scancel", "--user=root")
            try:
                _wait("an empty queue", lambda: not self.run("squeue", "-h").stdout.strip(), 60)
            except RuntimeError:
                pass  # stopping slurmd below ends what is left
        for proc in reversed(self._procs):
            name = Path(proc.args[0]).name
            if proc.poll() is None and _comm(proc.pid) == name[:15]:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        for name in CONFS:
            path = ETC / name
            if path.exists() and path.read_text().startswith(MARK):
                path.unlink()


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None

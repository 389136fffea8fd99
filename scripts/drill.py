#!/usr/bin/env python3
"""The fault-injection drill: kill ignite's processes at many points of its multi-step
operations, recover as a user would, and check that nothing leaked and nothing was lost.

    scripts/drill.py [--points 50] [--seed N] [--bin DIR] [--keep]

Each kill point is one of:
  - a named step (`IGNITE_FAULT=<point>`: the process SIGKILLs itself there, or SIGTERMs with
    IGNITE_FAULT_SIGNAL=TERM) of `ignite create`, `start` (CNI plugins and `ignite-spawn`
    included), `stop`, `rm`, `image import` and `ignited`'s reconcile pass;
  - a `kill -9` from outside, after a random delay, of `ignite start`/`stop`/`rm`/`image
    import`, of a VM's supervisor (`ignite-spawn`), of its VMM, or of `ignited`.
Recovery is what a user does next: the same command again (`start`, `rm -f`, the import,
another daemon pass), then `ignite image prune` for the blob store. Then the invariants:
  - no process, network namespace, IPAM lease, nat rule or CNI-FORWARD rule of a VM that is
    not running; every VM the store says is running has its supervisor and VMM;
  - no temporary file of a dead process (store, bases, blobs, scratch), no blob that no
    image or kernel records;
  - no VM lost or duplicated, and the data each running VM synced to its disk is still there.
The seed is printed; `--seed` replays the same schedule. The last line is
`drill: N kill points, L leaks, M lost`; the exit status is non-zero on any violation.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IPAM = "/var/lib/cni/networks/ignite-cni-bridge"

# Named steps, by operation (see `ignite_proc::fault::point` calls).
START_POINTS = [
    "start.network-planned",
    "cni.added-bridge",
    "cni.added-portmap",
    "cni.added-firewall",
    "start.network-attached",
    "start.before-spawn",
    "start.supervisor-waiting",
    "spawn.vmm-started",
]
CREATE_POINTS = ["create.base-ready", "create.disk-written"]
STOP_POINTS = ["stop.signalled"]
RM_POINTS = ["rm.locked", "rm.network-released"]
IMPORT_POINTS = ["import.fetch", "import.fetched", "import.applied", "import.built", "import.replacing"]
RECONCILE_POINTS = ["reconcile.created", "reconcile.stopped-for-update", "start.network-attached", "cni.added-bridge"]


def log(msg):
    print(msg, flush=True)


class Violation(Exception):
    pass


class Drill:
    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.bin = args.bin
        self.ignite = os.path.join(self.bin, "ignite")
        self.ignited = os.path.join(self.bin, "ignited")
        self.tmp = tempfile.mkdtemp(prefix="ignite-drill.")
        self.root = os.path.join(self.tmp, "root")
        self.manifests = os.path.join(self.tmp, "manifests")
        os.makedirs(self.manifests)
        self.env = dict(os.environ, IGNITE_ROOT=self.root)
        self.env.pop("IGNITE_FAULT", None)
        self.env.pop("IGNITE_CONFIG", None)
        if "IGNITE_AGENT" not in self.env:
            out = subprocess.run([os.path.join(REPO, "scripts/build-agent.sh")], check=True, capture_output=True, text=True)
            self.env["IGNITE_AGENT"] = out.stdout.strip().splitlines()[-1]
        vmlinux = subprocess.run(
            [os.path.join(REPO, "images/kernel/build.sh")], check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1]
        bb = os.path.join(self.tmp, "bb")
        subprocess.run([os.path.join(REPO, "images/busybox/build.sh"), bb], check=True, capture_output=True)
        self.layout = f"oci:{bb}/oci:latest"
        self.archive = f"docker-archive:{bb}/busybox.tar"
        self.ig("kernel", "import", vmlinux, "--name", "localhost/ignite-kernel:6.1")
        self.ig("image", "import", self.layout, "--name", "busybox")
        self.tokens = {}  # VM name -> data it synced to its disk
        self.expected = set()  # VMs that must exist
        self.uids = set()  # every VM UID this drill has seen
        self.ips = set()  # every address its VMs have had
        self.leaks = 0
        self.lost = 0
        self.points = 0
        self.next_vm = 0
        self.port = 18400 + (args.seed % 500)
        # VM cgroups that exist before the drill starts are not its doing: left on this host by
        # a run killed in another login session (another cgroup of its own; ignited's UIDs
        # are stable per manifest, so an earlier drill's can carry the same UID).
        self.old_cgroups = set(cgroup_dirs(None))
        if self.old_cgroups:
            print(f"drill: {len(self.old_cgroups)} VM cgroups of earlier runs exist on this host (not checked)")

    # -- running ignite ---------------------------------------------------------------------

    def run(self, *args, fault=None, sig="KILL", check=False, timeout=300, prog=None):
        env = dict(self.env)
        if fault:
            env["IGNITE_FAULT"] = fault
            env["IGNITE_FAULT_SIGNAL"] = sig
        p = subprocess.run([prog or self.ignite, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise Violation(f"`ignite {' '.join(args)}` failed: {p.stderr.strip()}")
        return p

    def ig(self, *args):
        return self.run(*args, check=True).stdout

    def run_killed_after(self, args, delay, prog=None):
        """Starts a command and SIGKILLs it after `delay` seconds (if it still runs)."""
        p = subprocess.Popen([prog or self.ignite, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            p.wait(timeout=delay)
            return False
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return True

    def vms(self):
        out = self.ig("ps", "-a", "-o", "json")
        vms = json.loads(out) if out.strip() else []
        for v in vms:
            self.uids.add(v["metadata"]["uid"])
            for ip in ((v.get("status") or {}).get("network") or {}).get("ipAddresses") or []:
                self.ips.add(ip)
        return vms

    def vm(self, name):
        return next((v for v in self.vms() if v["metadata"]["name"] == name), None)

    def wait_ready(self, name, secs=120):
        deadline = time.time() + secs
        while time.time() < deadline:
            p = self.run("exec", "--timeout", "5", name, "--", "true")
            if p.returncode == 0:
                return
            time.sleep(0.2)
        raise Violation(f"VM {name}: exec never worked after its start: {p.stderr.strip()}")

    # -- the VM pool --------------------------------------------------------------------------

    def new_name(self):
        self.next_vm += 1
        return f"d{self.next_vm}"

    def create(self, name, fault=None, sig="KILL"):
        args = ["create", "busybox", "--name", name, "--memory", "128MB"]
        if self.next_vm % 3 == 0:
            args += ["-p", f"{self.port + self.next_vm}:80"]
        return self.run(*args, fault=fault, sig=sig)

    def ensure_running(self, name):
        v = self.vm(name)
        if v is None:
            raise Violation(f"VM {name} was lost")
        if not v["status"].get("running"):
            p = self.run("start", name)
            # A start killed after it spawned the VM's supervisor goes on there (as Docker's
            # does) and records the VM running once it runs: a start meanwhile says so. Either
            # way the VM must answer exec below.
            if p.returncode != 0 and "is already running" not in p.stderr:
                raise Violation(f"`ignite start {name}` failed: {p.stderr.strip()}")
        self.wait_ready(name)
        if name not in self.tokens:
            token = f"{name}-{self.rng.getrandbits(32):08x}"
            self.run("exec", name, "--", "sh", "-c", f"echo {token} >/root/drill-token && sync", check=True)
            self.tokens[name] = token

    def pick(self, running=None):
        vms = [v for v in self.vms() if v["metadata"]["name"] in self.expected]
        if running is not None:
            vms = [v for v in vms if bool(v["status"].get("running")) == running]
        return self.rng.choice(vms)["metadata"]["name"] if vms else None

    def fresh_vm(self):
        name = self.new_name()
        self.create(name).check_returncode()
        self.expected.add(name)
        self.ensure_running(name)
        return name

    # -- kill points --------------------------------------------------------------------------

    def point_create(self):
        name = self.new_name()
        if self.rng.random() < 0.7:
            fault = self.rng.choice(CREATE_POINTS)
            p = self.create(name, fault=fault)
            what = f"create {name}: killed at {fault}"
            killed = p.returncode == -9
        else:
            delay = self.rng.uniform(0, 0.4)
            args = ["create", "busybox", "--name", name, "--memory", "128MB"]
            killed = self.run_killed_after(args, delay)
            what = f"create {name}: kill -9 after {delay * 1000:.0f} ms"
        # Recovery: the create again, unless the VM exists whole.
        if self.vm(name) is None:
            self.create(name).check_returncode()
        self.expected.add(name)
        self.ensure_running(name)
        return what, killed

    def point_start(self):
        name = self.pick(running=False) or self.fresh_stopped()
        r = self.rng.random()
        if r < 0.65:
            fault = self.rng.choice(START_POINTS)
            sig = "TERM" if self.rng.random() < 0.3 else "KILL"
            p = self.run("start", name, fault=fault, sig=sig)
            what = f"start {name}: {sig} at {fault}"
            killed = p.returncode in (-9, -15) or (fault.startswith("spawn.") and p.returncode != 0)
        else:
            delay = self.rng.uniform(0, 0.3)
            killed = self.run_killed_after(["start", name], delay)
            what = f"start {name}: kill -9 after {delay * 1000:.0f} ms"
        self.collect_ips()
        v = self.vm(name)
        if v and v["status"].get("running"):
            self.wait_ready(name)
        else:
            self.ensure_running(name)
        return what, killed

    def fresh_stopped(self):
        name = self.fresh_vm()
        self.run("stop", name, check=True)
        return name

    def point_stop(self):
        name = self.pick(running=True) or self.fresh_vm()
        r = self.rng.random()
        if r < 0.4:
            fault = self.rng.choice(STOP_POINTS)
            p = self.run("stop", name, fault=fault)
            what = f"stop {name}: killed at {fault}"
            killed = p.returncode == -9
        elif r < 0.6:
            # The supervisor dies between the VMM's end and recording it: started with the
            # fault in its environment, then stopped.
            self.run("stop", name, check=True)
            self.run("start", name, fault="spawn.vmm-ended", check=True)
            self.wait_ready(name)
            self.run("stop", name)
            what = f"stop {name}: its supervisor killed at spawn.vmm-ended"
            killed = True
        else:
            delay = self.rng.uniform(0, 0.5)
            killed = self.run_killed_after(["stop", name], delay)
            what = f"stop {name}: kill -9 after {delay * 1000:.0f} ms"
        # Recovery: wait for it to be down (stop again if it still runs), then start it again.
        deadline = time.time() + 60
        while (self.vm(name) or {}).get("status", {}).get("running") and time.time() < deadline:
            self.run("stop", name)
            time.sleep(0.1)
        self.ensure_running(name)
        return what, killed

    def point_rm(self):
        name = self.pick() or self.fresh_vm()
        if self.rng.random() < 0.6:
            fault = self.rng.choice(RM_POINTS)
            p = self.run("rm", "-f", name, fault=fault)
            what = f"rm -f {name}: killed at {fault}"
            killed = p.returncode == -9
        else:
            delay = self.rng.uniform(0, 0.3)
            killed = self.run_killed_after(["rm", "-f", name], delay)
            what = f"rm -f {name}: kill -9 after {delay * 1000:.0f} ms"
        if self.vm(name) is not None:
            self.run("rm", "-f", name, check=True)
        self.expected.discard(name)
        self.tokens.pop(name, None)
        return what, killed

    def point_supervisor(self, vmm=False):
        name = self.pick(running=True) or self.fresh_vm()
        v = self.vm(name)
        uid = v["metadata"]["uid"]
        delay = self.rng.uniform(0, 1.0)
        time.sleep(delay)
        target = self.vmm_pid(uid) if vmm else v["status"]["runtime"]["pid"]
        what = f"{'VMM' if vmm else 'supervisor'} of {name}: kill -9 after {delay * 1000:.0f} ms"
        killed = False
        if target:
            try:
                os.kill(int(target), signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        deadline = time.time() + 30
        while (self.vm(name) or {}).get("status", {}).get("running") and time.time() < deadline:
            time.sleep(0.1)
        self.ensure_running(name)
        return what, killed

    def point_kill_supervisor(self):
        return self.point_supervisor(vmm=False)

    def point_kill_vmm(self):
        return self.point_supervisor(vmm=True)

    def point_import(self):
        name = "localhost/bb2:latest"
        args = ["image", "import", self.archive, "--name", name, "--force"]
        # From nothing, so that every step of an import runs (fetch, apply, mke2fs, replace).
        self.run("rmi", "-f", name)
        self.run("image", "prune", check=True)
        if self.rng.random() < 0.6:
            fault = self.rng.choice(IMPORT_POINTS)
            p = self.run(*args, fault=fault)
            what = f"image import {name}: killed at {fault}"
            killed = p.returncode == -9
        else:
            delay = self.rng.uniform(0, 1.5)
            killed = self.run_killed_after(args, delay)
            what = f"image import {name}: kill -9 after {delay * 1000:.0f} ms"
        self.run(*args, check=True)
        if self.rng.random() < 0.5:
            self.run("rmi", "-f", name, check=True)
        return what, killed

    def point_reconcile(self):
        manifest = os.path.join(self.manifests, "g.yaml")
        cpus = self.rng.choice([1, 2])
        with open(manifest, "w") as f:
            f.write(
                "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: managed\n"
                f"spec:\n  image:\n    oci: busybox\n  cpus: {cpus}\n  memory: 128MB\n"
            )
        args = ["daemon", "--manifest-dir", self.manifests, "--socket", "none", "--once"]
        if self.rng.random() < 0.6:
            fault = self.rng.choice(RECONCILE_POINTS)
            p = self.run(*args, fault=fault, prog=self.ignited)
            what = f"ignited pass (cpus {cpus}): killed at {fault}"
            killed = p.returncode == -9
        else:
            delay = self.rng.uniform(0, 1.0)
            killed = self.run_killed_after(args[:-1], delay, prog=self.ignited)
            what = f"ignited (cpus {cpus}): kill -9 after {delay * 1000:.0f} ms"
        self.collect_ips()
        # Recovery: the next pass.
        p = self.run(*args, prog=self.ignited)
        if p.returncode != 0:
            raise Violation(f"the next ignited pass failed: {p.stderr.strip()}")
        managed = [v for v in self.vms() if v["metadata"]["name"] == "managed"]
        if len(managed) != 1:
            raise Violation(f"{len(managed)} VMs named managed after the next pass")
        if str(managed[0]["spec"].get("cpus")) != str(cpus):
            raise Violation(f"managed has cpus {managed[0]['spec'].get('cpus')}, its manifest says {cpus}")
        self.expected.add("managed")
        self.ensure_running("managed")
        return what, killed

    # -- invariants ---------------------------------------------------------------------------

    def vmm_pid(self, uid):
        for pid, cmd in procs():
            if f"ignite-{uid}" in cmd and "qemu" in cmd:
                return pid
        return None

    def collect_ips(self):
        for ip, owner in ipam_leases():
            if owner in self.uids or owner in {v["metadata"]["uid"] for v in self.vms()}:
                self.ips.add(ip)

    def check(self):
        problems = []
        self.run("image", "prune", check=True)
        vms = self.vms()
        running = {v["metadata"]["uid"] for v in vms if v["status"].get("running")}
        names = [v["metadata"]["name"] for v in vms]
        for n in set(names):
            if names.count(n) > 1:
                problems.append(f"VM {n} duplicated")
        lost = [n for n in self.expected if n not in names]
        self.lost += len(lost)
        problems += [f"VM {n} lost" for n in lost]
        ps = procs()
        for v in vms:
            uid = v["metadata"]["uid"]
            spawn = [p for p, c in ps if "ignite-spawn" in c and uid in c]
            vmm = [p for p, c in ps if f"ignite-{uid}" in c and "qemu" in c]
            if uid in running and (not spawn or not vmm):
                problems.append(f"VM {v['metadata']['name']} says running, supervisor {spawn}, VMM {vmm}")
            if uid not in running and (spawn or vmm):
                problems.append(f"VM {v['metadata']['name']} is stopped but has processes {spawn + vmm}")
        known = self.uids | {v["metadata"]["uid"] for v in vms}
        for p, c in ps:
            for uid in known - running:
                if uid in c and ("ignite-spawn" in c or "qemu" in c):
                    problems.append(f"process {p} of VM {uid}, which is not running: {c[:80]}")
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for uid in known - running:
            if f"ignite-{uid}" in netns:
                problems.append(f"netns ignite-{uid} of a VM that is not running")
        leased = set()
        for ip, owner in ipam_leases():
            if owner in known:
                leased.add(ip)
                self.ips.add(ip)
                if owner not in running:
                    problems.append(f"IPAM lease {ip} of VM {owner}, which is not running")
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        for uid in known - running:
            if uid in nat:
                problems.append(f"nat rules of VM {uid}, which is not running")
        filt = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout
        for ip in self.ips - leased:
            for line in filt.splitlines():
                if f" {ip}/32 " in line + " ":
                    problems.append(f"filter rule of released address {ip}: {line}")
        # Jails: the root made for a VMM and its cgroup exist only while it runs.
        for uid in known - running:
            if os.path.exists(f"/run/ignite/jail/{uid}"):
                problems.append(f"jail root /run/ignite/jail/{uid} of a VM that is not running")
            for d in set(cgroup_dirs(uid)) - self.old_cgroups:
                problems.append(f"cgroup {d} of a VM that is not running")
        problems += self.temp_files()
        problems += self.stray_blobs()
        for v in vms:
            n = v["metadata"]["name"]
            if v["metadata"]["uid"] in running and n in self.tokens:
                p = self.run("exec", "--timeout", "20", n, "--", "cat", "/root/drill-token")
                if p.stdout.strip() != self.tokens[n]:
                    self.lost += 1
                    problems.append(f"VM {n}: synced data {self.tokens[n]!r} now reads {p.stdout.strip()!r} ({p.stderr.strip()})")
        return problems

    def temp_files(self):
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                m = re.search(r"\.tmp-(\d+)", n) or (re.match(r"(?:import|kernel)-(\d+)-", n) if dirpath.endswith("/tmp") else None)
                if (n.startswith(".tmp-") or n.startswith(".rm-")) and dirpath.rstrip("/") in {
                    os.path.join(self.root, k) for k in ("vm", "image", "kernel")
                }:
                    out.append(f"store leftover {os.path.join(dirpath, n)}")
                elif m and not os.path.exists(f"/proc/{m.group(1)}"):
                    out.append(f"temporary file of dead process {os.path.join(dirpath, n)}")
        return out

    def stray_blobs(self):
        wanted = set()
        for kind in ("image", "kernel"):
            d = os.path.join(self.root, kind)
            for o in os.listdir(d) if os.path.isdir(d) else []:
                try:
                    with open(os.path.join(d, o, "blobs.json")) as f:
                        wanted |= {b.removeprefix("sha256:") for b in json.load(f)}
                except (OSError, ValueError):
                    pass
        d = os.path.join(self.root, "blobs", "sha256")
        have = set(os.listdir(d)) if os.path.isdir(d) else set()
        return [f"blob {b} that no image or kernel records" for b in sorted(have - wanted)]

    # -- the run ------------------------------------------------------------------------------

    def main(self, n):
        ops = [
            (self.point_start, 5),
            (self.point_create, 2),
            (self.point_stop, 2),
            (self.point_rm, 2),
            (self.point_kill_supervisor, 2),
            (self.point_kill_vmm, 2),
            (self.point_import, 2),
            (self.point_reconcile, 2),
        ]
        weights = [w for _, w in ops]
        self.fresh_vm()
        self.fresh_vm()
        violations = 0
        for i in range(1, n + 1):
            op = self.rng.choices([o for o, _ in ops], weights)[0]
            name = op.__name__.removeprefix("point_")
            t = time.monotonic()
            try:
                what, killed = op()
                problems = self.check()
            except Violation as e:
                what, killed, problems = f"{name}: recovery failed", False, [str(e)]
            except subprocess.TimeoutExpired as e:
                what, killed, problems = f"{name}: recovery failed", False, [f"timed out: {e}"]
            self.points += 1
            state = "killed" if killed else "finished before the kill"
            log(f"[{i:3}/{n}] {what} ({state}); recovered and checked in {time.monotonic() - t:.1f} s")
            for p in problems:
                log(f"        VIOLATION: {p}")
            self.leaks += len([p for p in problems if "lost" not in p and "synced data" not in p])
            violations += len(problems)
            # Keep the pool small: at most 4 VMs.
            while len(self.expected) > 4:
                victim = sorted(self.expected)[0]
                self.run("rm", "-f", victim, check=True)
                self.expected.discard(victim)
                self.tokens.pop(victim, None)
        return violations

    def close(self, keep):
        for v in self.vms() if os.path.isdir(self.root) else []:
            self.run("rm", "-f", v["metadata"]["uid"])
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def procs():
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except (OSError, IndexError):
            continue
        if cmd:
            out.append((int(pid), cmd))
    return out


def cgroup_dirs(uid):
    """The cgroup directories named after VM `uid` (ignite/<uid>, ignite.slice/<uid>); of any
    VM when `uid` is None."""
    out = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 9:
            dirs[:] = []
            continue
        name = os.path.basename(top)
        if (name == uid or (uid is None and re.fullmatch(r"[0-9a-f]{16}", name))) and os.path.basename(
                os.path.dirname(top)) in ("ignite", "ignite.slice"):
            out.append(top)
            dirs[:] = []
    return out


def ipam_leases():
    out = []
    if not os.path.isdir(IPAM):
        return out
    for n in os.listdir(IPAM):
        if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", n):
            continue
        try:
            with open(os.path.join(IPAM, n)) as f:
                out.append((n, f.read().splitlines()[0].strip()))
        except (OSError, IndexError):
            pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "debug"), help="directory of ignite, ignited, ignite-spawn")
    ap.add_argument("--keep", action="store_true", help="keep the drill's state root")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("drill: needs root (network namespaces, CNI, iptables)")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    for b in ("ignite", "ignited", "ignite-spawn"):
        if not os.path.exists(os.path.join(args.bin, b)):
            subprocess.run(["cargo", "build", "-p", "ignite-cli", "-p", "ignite-daemon", "-p", "ignite-supervisor"], cwd=REPO, check=True)
            break
    log(f"drill: seed {args.seed} (replay: scripts/drill.py --points {args.points} --seed {args.seed})")
    d = Drill(args)
    t = time.monotonic()
    try:
        violations = d.main(args.points)
    finally:
        d.close(args.keep)
    log(f"drill: {d.points} kill points, {d.leaks} leaks, {d.lost} lost ({time.monotonic() - t:.0f} s, seed {args.seed})")
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()

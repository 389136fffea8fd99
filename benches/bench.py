#!/usr/bin/env python3
"""ignite benchmarks: print figures, compare against a reference in the same run.

    benches/bench.py boot   [--runs 100]  ignite run -> guest init (the kernel runs /init) and -> the
                                          image's ready line, vs bare QEMU microvm with the same
                                          kernel, command line, initramfs, disk and accelerator
                                          (and a 90% bootstrap interval of the ratio: TCG boots
                                          on this host spread widely; with 100 runs each the
                                          interval is still about +-3-5%, at 40 +-4-7%);
                                          and the host-side time from `ignite run` to the VMM's exec
                                          (BENCH_RAW=FILE writes every run's figures as JSON)
    benches/bench.py jail   [--runs 8]    what the VMM jail costs: ignite run -> VMM exec and -> guest
                                          init, jailed and unjailed, taking turns at going first
    benches/bench.py disk   [--runs 10]   VM creation for a 64 MiB and a 1 GiB image (ratio ~1), for
                                          QEMU's root disk (qcow2 overlay) and Firecracker's
                                          (raw base + writable layer)
    benches/bench.py vmm    [--runs 5]    QEMU and Firecracker side by side: ignite run -> guest
                                          kernel banner (and -> init where KVM boots Linux), and
                                          the VMM's RSS; needs firecracker (IGNITE_FIRECRACKER or PATH)
    benches/bench.py import [--runs 3]    image import vs skopeo copy + umoci unpack + mke2fs -d
    benches/bench.py net    [--runs 20]   network set-up per VM (netns + CNI ADD + tap), from
                                          `ignite start --log-level debug`, next to Weave Ignite's
                                          0.5-0.85 s (Ignite #436)
    benches/bench.py exec   [--runs 50]   `ignite exec VM true` through the guest agent vs over SSH
                                          (-i KEY), on one Debian systemd VM, side by side
    benches/bench.py reconcile [--runs 5] ignited: manifest written -> VM running (manifest-dir mode),
                                          and git push -> VM running (gitops, --interval 2), next
                                          to `ignite run` of the same VM
    benches/bench.py all

    benches/bench.py clone  [--runs 32]   ignite run --from-snapshot -> exec works, vs a cold ignite run
                                          -> exec works, alternating (busybox, 128 MB); and what
                                          taking the snapshot costs (the guest's pause, its size)
    benches/bench.py dense  [--runs 100] [--ksm] [--tcg-cache 16MB]  N busybox VMs (--memory 64MB) at once: time until
                                          all answer exec, host memory per VM (used memory over the
                                          N, and the VMMs' PSS), then all removed and nothing left
                                          behind; --ksm turns the host's same-page merging on for
                                          the run (QEMU marks guest memory mergeable); --tcg-cache
                                          sets the Configuration's spec.tcgCache

Uses target/release/ignite (built when out of date), the cached kernel and test images. Absolute
times on this machine (2 cores, TCG) are not bare metal: read the ratios.
"""
import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release")
IGNITE = os.path.join(BIN, "ignite")
MARKER = b"IGNITE-BUSYBOX-READY"


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw).stdout


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(xs):
    return f"p50 {pct(xs, 50) * 1000:8.1f} ms   p90 {pct(xs, 90) * 1000:8.1f} ms   (n={len(xs)})"


class Env:
    def __init__(self):
        # Always (a no-op when up to date): a stale binary would measure old code.
        subprocess.run(["cargo", "build", "--release", "-p", "ignite-cli", "-p", "ignite-daemon", "-p", "ignite-supervisor"], cwd=REPO, check=True)
        # The static guest agent, next to ignite (where it looks for it).
        sh(os.path.join(REPO, "scripts/build-agent.sh"), "--install", BIN)
        self.tmp = tempfile.mkdtemp(prefix="ignite-bench.")
        self.root = os.path.join(self.tmp, "root")
        self.env = dict(os.environ, IGNITE_ROOT=self.root)
        self.vmlinux = sh(os.path.join(REPO, "images/kernel/build.sh")).strip().splitlines()[-1]
        sh(os.path.join(REPO, "images/busybox/build.sh"), os.path.join(self.tmp, "bb"))
        self.ig("kernel", "import", self.vmlinux, "--name", "localhost/ignite-kernel:6.1")
        self.ig("image", "import", f"oci:{self.tmp}/bb/oci:latest", "--name", "busybox")

    def ig(self, *args):
        return subprocess.run([IGNITE, *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def close(self):
        subprocess.run([IGNITE, "rm", "-f", *self.ig("ps", "-a", "-q").split()], env=self.env, capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_text(path, needle, deadline):
    """When `needle` appeared in the file at `path` (monotonic time), or None at the deadline."""
    while time.time() < deadline:
        try:
            with open(path, "rb") as f:
                if needle in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return None


def wait_marker(path, deadline, needle=MARKER):
    t = wait_text(path, needle, deadline)
    if t is None:
        raise SystemExit(f"no {needle!r} in {path}")
    return t


# The init shim's first line (the kernel's "Run /init" is an informational line, not shown on
# the console of ignite's kernel).
INIT_LINE = b"ignite-init: started"


def bench_boot(e, runs):
    ign, bare, host = [], [], []
    ign_init, bare_init = [], []
    # The bare side boots the machine of a reference VM (its argv, a fresh overlay on the same
    # base, a copy of its initramfs), made once: the two sides can then take turns at going
    # first, so that neither always runs right after the other's teardown (writeback, a VM's
    # files removed) — measured, the order alone moved one side's p50 by tens of ms.
    subprocess.run([IGNITE, "run", "busybox", "--name", "bootref", "--memory", "256MB", "--network-plugin", "none"],
                   env=e.env, check=True, capture_output=True)
    ref_dir = os.path.join(e.root, "vm", e.ig("inspect", "vm", "bootref", "-t", "{{.UID}}").strip())
    wait_marker(os.path.join(ref_dir, "console.log"), time.time() + 120)
    accel = e.ig("inspect", "vm", "bootref", "-t", "{{.Status.Runtime.Accel}}").strip()
    ref_argv = unjailed_argv(ref_dir)
    backing = json.loads(sh("qemu-img", "info", "-U", "--output=json", os.path.join(ref_dir, "disk.qcow2")))["full-backing-filename"]
    ref_initrd = os.path.join(e.tmp, "ref-initrd.cpio")
    shutil.copy(os.path.join(ref_dir, "initrd.cpio"), ref_initrd)
    subprocess.run([IGNITE, "rm", "-f", "bootref"], env=e.env, capture_output=True)

    def run_ignite(i):
        name = f"boot{i}"
        t0 = time.monotonic()
        t0_wall = time.time_ns()
        # No network: the bare reference has none either (network set-up is `bench.py net`).
        out = subprocess.run([IGNITE, "run", "busybox", "--name", name, "--memory", "256MB", "--network-plugin", "none"],
                             env=e.env, check=True, capture_output=True, text=True)
        # Its ID from what `run` said: no other process competes with the guest for the host's
        # cores while it boots (the bare side has none either).
        uid = re.search(r'Created VM with ID "([0-9a-f]+)"', out.stderr).group(1)
        vmdir = os.path.join(e.root, "vm", uid)
        ti = wait_marker(os.path.join(vmdir, "console.log"), time.time() + 120, INIT_LINE)
        t1 = wait_marker(os.path.join(vmdir, "console.log"), time.time() + 120)
        ign.append(t1 - t0)
        ign_init.append(ti - t0)
        host.append((vmm_exec_ns(vmdir) - t0_wall) / 1e9)
        subprocess.run([IGNITE, "rm", "-f", name], env=e.env, capture_output=True)

    def run_bare(i):
        # The same machine by hand: the reference VM's argv on a fresh overlay and initramfs copy.
        work = os.path.join(e.tmp, f"bare{i}")
        os.makedirs(work)
        disk = os.path.join(work, "disk.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, disk)
        initrd = os.path.join(work, "initrd.cpio")
        shutil.copy(ref_initrd, initrd)
        bargv = [a.replace(os.path.join(ref_dir, "disk.qcow2"), disk).replace(os.path.join(ref_dir, "initrd.cpio"), initrd)
                 .replace(os.path.join(ref_dir, "qmp.sock"), os.path.join(work, "qmp.sock"))
                 .replace(os.path.join(ref_dir, "agent-vmm.sock"), os.path.join(work, "agent-vmm.sock")) for a in ref_argv]
        log = os.path.join(work, "console.log")
        with open(log, "wb") as out:
            t0 = time.monotonic()
            p = subprocess.Popen(bargv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.DEVNULL)
            ti = wait_marker(log, time.time() + 120, INIT_LINE)
            t1 = wait_marker(log, time.time() + 120)
            bare.append(t1 - t0)
            bare_init.append(ti - t0)
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)

    for i in range(runs):
        for side in ((run_ignite, run_bare) if i % 2 == 0 else (run_bare, run_ignite)):
            side(i)
    if os.environ.get("BENCH_RAW"):
        with open(os.environ["BENCH_RAW"], "w") as f:
            json.dump({"ignite_init": ign_init, "bare_init": bare_init, "host": host}, f)
    print(f"boot ({accel}, busybox, 256 MB, 1 vCPU), {runs} runs each, taking turns at going first")
    print(f"  ignite run -> guest init     {fmt(ign_init)}   (the init shim runs; target <= 0.6 s under TCG)")
    print(f"  bare qemu  -> guest init     {fmt(bare_init)}")
    lo, hi = ratio_interval(ign_init, bare_init)
    print(f"  ratio ignite / bare (p50)    {pct(ign_init, 50) / pct(bare_init, 50):.3f}   (target <= 1.05; "
          f"90% bootstrap interval {lo:.3f}-{hi:.3f})")
    print(f"  ignite run -> image's ready line  {fmt(ign)}   (the image's init has run its rcS)")
    print(f"  bare qemu  -> image's ready line  {fmt(bare)}")
    print(f"  ratio ignite / bare (p50)    {pct(ign, 50) / pct(bare, 50):.3f}")
    print(f"  ignite run -> VMM exec       {fmt(host)}   (target < 30 ms)")
    guest = [a - b for a, b in zip(ign_init, host)]
    print(f"  ignite's VMM exec -> guest init  {fmt(guest)}   (the guest's part, next to bare qemu's)")
    # The ratio's scatter from run to run is the guest's (TCG boots here spread +-15%, both sides
    # alike); what ignite adds is its host side, steady to about a ms from run to run, and whatever its
    # jail costs the guest (the means of the guest's part and of bare qemu, over all runs).
    print(f"  ignite's own time: host side p50 {pct(host, 50) * 1000:.1f} ms = "
          f"{pct(host, 50) / pct(bare_init, 50) * 100:.1f}% of bare qemu's p50; guest part mean "
          f"{statistics.mean(guest) * 1000:.1f} vs bare qemu mean {statistics.mean(bare_init) * 1000:.1f} ms")


def ratio_interval(a, b, rounds=2000):
    """A 90% bootstrap interval of p50(a) / p50(b): how far this run's ratio could be from
    another run's on this host, given the spread of its samples."""
    rng = random.Random(0)
    rs = sorted(pct(rng.choices(a, k=len(a)), 50) / pct(rng.choices(b, k=len(b)), 50) for _ in range(rounds))
    return rs[int(rounds * 0.05)], rs[int(rounds * 0.95)]


def vmm_exec_ns(vmdir):
    """When the VMM was exec'd: the jailer says so in vmm.log; unjailed, the supervisor in spawn.log."""
    vmm_log = open(os.path.join(vmdir, "vmm.log")).read()
    if "vmm_exec_unix_ns=" in vmm_log:
        return int(vmm_log.rsplit("vmm_exec_unix_ns=", 1)[1].split()[0])
    spawn_log = open(os.path.join(vmdir, "spawn.log")).read()
    return int(spawn_log.rsplit("vmm_spawn_unix_ns=", 1)[1].split()[0])


def unjailed_argv(vmdir):
    """The VMM's argv as a bare QEMU takes it: a jailed VM's (jail.json) with its descriptors and
    jail paths turned back into the host's paths, or an unjailed VM's (spawn.log)."""
    spec_path = os.path.join(vmdir, "jail.json")
    sock = lambda a: re.sub(r"socket,id=(qmp|agent0),fd=\d+", lambda m: f"socket,id={m.group(1)},path=" +
                            os.path.join(vmdir, "qmp.sock" if m.group(1) == "qmp" else "agent-vmm.sock"), a)
    if not os.path.exists(spec_path):
        spawn_log = open(os.path.join(vmdir, "spawn.log")).read()
        return [sock(a) for a in json.loads(spawn_log.rsplit("ignite-spawn: argv ", 1)[1].splitlines()[0])]
    spec = json.load(open(spec_path))
    out, skip = [], False
    for a in spec["argv"]:
        if skip:
            skip = False
            continue
        if a == "-add-fd":
            skip = True
            continue
        for host, inside in spec["files"]:
            if a == inside:
                a = host
        for i, d in enumerate(spec["disks"]):
            a = a.replace(f"/dev/fdset/{2 * i + 2}", d.get("backing") or "")
            a = a.replace(f"/dev/fdset/{2 * i + 1}", d["path"])
        out.append(sock(a))
    return out


def bench_jail(e, runs):
    """What the jail costs: `ignite run` -> VMM exec (host side) and -> guest init, jailed and not."""
    res = {True: ([], []), False: ([], [])}
    for i in range(runs):
        # Taking turns at going first, as in `boot`: neither side always follows the other's
        # removal.
        for jailed in ((True, False) if i % 2 == 0 else (False, True)):
            name = f"jail{i}{'j' if jailed else 'n'}"
            t0, t0_wall = time.monotonic(), time.time_ns()
            subprocess.run([IGNITE, "run", "busybox", "--name", name, "--memory", "256MB", "--network-plugin", "none",
                            f"--jail={'true' if jailed else 'false'}"], env=e.env, check=True, capture_output=True)
            uid = e.ig("inspect", "vm", name, "-t", "{{.UID}}").strip()
            vmdir = os.path.join(e.root, "vm", uid)
            t1 = wait_marker(os.path.join(vmdir, "console.log"), time.time() + 120)
            res[jailed][0].append((vmm_exec_ns(vmdir) - t0_wall) / 1e9)
            res[jailed][1].append(t1 - t0)
            subprocess.run([IGNITE, "rm", "-f", name], env=e.env, capture_output=True)
    (jx, jb), (nx, nb) = res[True], res[False]
    print(f"jail (busybox, 256 MB, TCG), {runs} runs each, taking turns at going first")
    print(f"  run -> VMM exec, jailed      {fmt(jx)}")
    print(f"  run -> VMM exec, unjailed    {fmt(nx)}")
    print(f"  the jail adds (p50)          {(pct(jx, 50) - pct(nx, 50)) * 1000:.1f} ms   (target <= 5 ms)")
    print(f"  run -> init, jailed          {fmt(jb)}")
    print(f"  run -> init, unjailed        {fmt(nb)}")
    lo, hi = ratio_interval(jb, nb)
    print(f"  boot ratio jailed / not      {pct(jb, 50) / pct(nb, 50):.3f}   (target <= 1.02; "
          f"90% bootstrap interval {lo:.3f}-{hi:.3f})")


def make_image(e, name, size_mb):
    root = os.path.join(e.tmp, f"img-{name}")
    shutil.copytree(os.path.join(e.tmp, "bb"), root + "-src", symlinks=True)
    # A busybox tree plus `size_mb` of incompressible data.
    tree = os.path.join(root, "rootfs")
    os.makedirs(tree)
    sh("sh", "-c", f"cd {tree} && tar -xf {e.tmp}/bb/busybox.tar && for l in */layer.tar; do tar -xf $l; done; rm -rf */layer.tar *.json manifest.json repositories; find . -maxdepth 1 -type d -empty -delete")
    if size_mb:
        with open(os.path.join(tree, "blob.bin"), "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1 << 20))
    sh(os.path.join(REPO, "images/oci-pack.py"), tree, os.path.join(root, "oci"))
    e.ig("image", "import", f"oci:{root}/oci:latest", "--name", name)


def bench_disk(e, runs):
    make_image(e, "small", 0)
    make_image(e, "big", 960)
    sizes = {}
    for name in ("small", "big"):
        e.ig("create", name, "--name", f"warm-{name}")  # builds the 4GB size class once
        e.ig("create", name, "--name", f"warm-fc-{name}", "--vmm", "firecracker")
        uid = e.ig("inspect", "vm", f"warm-fc-{name}", "-t", "{{.UID}}").strip()
        with open(os.path.join(e.root, "vm", uid, "rootdisk.json")) as f:
            sizes[name] = os.path.getsize(json.load(f)["base"])  # the image's own base
    res = {}
    for vmm in ("qemu", "firecracker"):
        for name in ("small", "big"):
            xs = []
            for i in range(runs):
                t0 = time.monotonic()
                e.ig("create", name, "--name", f"{vmm}-{name}{i}", "--vmm", vmm)
                xs.append(time.monotonic() - t0)
            res[vmm, name] = xs
    print(f"VM creation (ignite create, 4GB disk, size class warm), {runs} runs each")
    for vmm, layout in (("qemu", "qcow2 overlay"), ("firecracker", "raw base + writable layer")):
        print(f"  --vmm {vmm} ({layout})")
        print(f"    image base {sizes['small'] >> 20:5d} MiB        {fmt(res[vmm, 'small'])}")
        print(f"    image base {sizes['big'] >> 20:5d} MiB        {fmt(res[vmm, 'big'])}")
        print(f"    ratio big / small (p50)    {pct(res[vmm, 'big'], 50) / pct(res[vmm, 'small'], 50):.3f}   (target <= 1.2)")


def vmm_pid(e, name):
    """The VMM process: the supervisor's child."""
    sup = e.ig("inspect", "vm", name, "-t", "{{.Status.Runtime.Pid}}").strip()
    for task in os.listdir(f"/proc/{sup}/task"):
        kids = open(f"/proc/{sup}/task/{task}/children").read().split()
        if kids:
            return int(kids[0])
    raise SystemExit(f"VM {name}: its supervisor {sup} has no VMM child")


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_vmm(e, runs):
    fc = os.environ.get("IGNITE_FIRECRACKER") or shutil.which("firecracker")
    if not fc:
        print("vmm: SKIPPED: no firecracker binary (IGNITE_FIRECRACKER or PATH)")
        return
    e.env["IGNITE_FIRECRACKER"] = fc
    res = {}
    for vmm in ("qemu", "firecracker"):
        banner, init, rss = [], [], []
        accel = None
        for i in range(runs):
            name = f"{vmm}-boot{i}"
            t0 = time.monotonic()
            subprocess.run([IGNITE, "run", "busybox", "--name", name, "--vmm", vmm, "--jail=false", "--memory", "128MB",
                            "--network-plugin", "none"], env=e.env, check=True, capture_output=True)
            uid = e.ig("inspect", "vm", name, "-t", "{{.UID}}").strip()
            accel = e.ig("inspect", "vm", name, "-t", "{{.Status.Runtime.Accel}}").strip()
            pid = vmm_pid(e, name)
            console = os.path.join(e.root, "vm", uid, "console.log")
            t1 = wait_text(console, b"Linux version", time.time() + 120)
            if t1 is None:
                raise SystemExit(f"{vmm}: no kernel banner within 120 s")
            banner.append(t1 - t0)
            rss.append(rss_mib(pid))
            t2 = wait_text(console, MARKER, time.time() + 60)
            if t2 is not None:
                init.append(t2 - t0)
            subprocess.run([IGNITE, "rm", "-f", name], env=e.env, capture_output=True)
        res[vmm] = (banner, init, rss, accel)
    print(f"VMMs side by side (busybox, 128 MB, 1 vCPU, unjailed, no network), {runs} runs each")
    for vmm, (banner, init, rss, accel) in res.items():
        print(f"  {vmm:11s} ({accel}) ignite run -> kernel banner   {fmt(banner)}")
        if init:
            print(f"  {vmm:11s} ({accel}) ignite run -> guest init      {fmt(init)}")
        else:
            print(f"  {vmm:11s} ({accel}) guest init: never reached (this host's KVM cannot run a Linux guest)")
        print(f"  {vmm:11s} VMM RSS at the banner          p50 {pct(rss, 50):7.1f} MiB")
    q, f = res["qemu"], res["firecracker"]
    print(f"  ratio firecracker / qemu: banner {pct(f[0], 50) / pct(q[0], 50):.3f}, RSS {pct(f[2], 50) / pct(q[2], 50):.3f}"
          + ("" if q[3] == f[3] else f"   (different accelerators: qemu {q[3]}, firecracker {f[3]})"))


def bench_import(e, runs):
    deb = sh(os.path.join(REPO, "images/debian/build.sh")).strip().splitlines()[-1]
    src = os.path.join(deb, "oci")
    ours, ref = [], []
    for i in range(runs):
        shutil.rmtree(os.path.join(e.root, "blobs"), ignore_errors=True)
        t0 = time.monotonic()
        e.ig("image", "import", f"oci:{src}:latest", "--name", f"deb{i}")
        ours.append(time.monotonic() - t0)
        work = os.path.join(e.tmp, f"ref{i}")
        os.makedirs(work)
        t0 = time.monotonic()
        sh("skopeo", "copy", "--quiet", f"oci:{src}:latest", f"oci:{work}/copy:latest")
        sh("umoci", "unpack", "--image", f"{work}/copy:latest", f"{work}/bundle")
        sh("mke2fs", "-q", "-F", "-t", "ext4", "-d", f"{work}/bundle/rootfs", f"{work}/img.ext4", "1G")
        ref.append(time.monotonic() - t0)
        shutil.rmtree(work)
    print(f"import of the Debian systemd image (OCI layout, {runs} runs, cold blob store)")
    print(f"  ignite image import                   {fmt(ours)}")
    print(f"  skopeo copy + umoci unpack + mke2fs   {fmt(ref)}")
    print(f"  ratio ignite / pipeline (p50)         {pct(ours, 50) / pct(ref, 50):.3f}")


def bench_net(e, runs):
    import re
    xs = []
    for i in range(runs):
        p = subprocess.run([IGNITE, "--log-level", "debug", "run", "busybox", "--name", f"net{i}", "--memory", "64MB"],
                           env=e.env, check=True, capture_output=True, text=True)
        m = re.search(r"after ([0-9.]+) ms", p.stderr)
        if not m:
            raise SystemExit(f"no network timing in: {p.stderr}")
        xs.append(float(m.group(1)) / 1000)
        subprocess.run([IGNITE, "rm", "-f", f"net{i}"], env=e.env, capture_output=True)
    print(f"network set-up per VM (netns + CNI bridge/host-local/portmap/firewall ADD + tap + tc), {runs} runs")
    print(f"  ignite                       {fmt(xs)}   (target < 50 ms; Weave Ignite: 500-850 ms)")


def bench_exec(e, runs):
    deb = sh(os.path.join(REPO, "images/debian/build.sh")).strip().splitlines()[-1]
    e.ig("image", "import", f"oci:{deb}/oci:latest", "--name", "debian-bench")
    e.ig("run", "debian-bench", "--name", "ex", "--memory", "512MB", "--ssh")
    deadline = time.time() + 300
    while b"IGNITE-DEBIAN-READY" not in subprocess.run([IGNITE, "logs", "ex"], env=e.env, capture_output=True).stdout:
        if time.time() > deadline:
            raise SystemExit("the Debian VM did not boot")
        time.sleep(0.2)
    uid = e.ig("inspect", "vm", "ex", "-t", "{{.UID}}").strip()
    key = os.path.join(e.root, "vm", uid, f"id_{uid}")

    def run(extra):
        xs = []
        subprocess.run([IGNITE, "exec", *extra, "ex", "true"], env=e.env, check=True)  # warm-up
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([IGNITE, "exec", *extra, "ex", "true"], env=e.env, check=True)
            xs.append(time.monotonic() - t0)
        return xs

    agent, ssh = run([]), run(["-i", key])
    print(f"exec latency, `ignite exec VM true` on a running Debian systemd VM ({runs} runs each)")
    print(f"  through the guest agent      {fmt(agent)}")
    print(f"  over SSH (OpenSSH, -i KEY)   {fmt(ssh)}")
    print(f"  ratio agent / SSH (p50)      {pct(agent, 50) / pct(ssh, 50):.3f}")
    e.ig("rm", "-f", "ex")


def until_exec(e, name, deadline_s=120):
    """Retries `ignite exec NAME true` until it works; returns how many tries it took."""
    t_end, tries = time.monotonic() + deadline_s, 0
    while True:
        tries += 1
        p = subprocess.run([IGNITE, "exec", "--timeout", "5", name, "true"], env=e.env, capture_output=True)
        if p.returncode == 0:
            return tries
        if time.monotonic() > t_end or b"is not running" in p.stderr:
            why = subprocess.run([IGNITE, "inspect", "vm", name, "-t", "{{.Status.Exit.Reason}}"], env=e.env,
                                 capture_output=True, text=True).stdout.strip()
            log = subprocess.run([IGNITE, "logs", name], env=e.env, capture_output=True).stdout.decode(errors="replace")
            raise SystemExit(f"exec never worked in VM {name}: {p.stderr.decode()} (ended: {why})\n"
                             + "\n".join(log.splitlines()[-15:]))
        time.sleep(0.01)


def bench_clone(e, runs):
    e.ig("run", "busybox", "--name", "snapsrc", "--memory", "128MB")
    until_exec(e, "snapsrc")
    # A snapshot of a VM that has booted: its image's ready line printed. Taken as soon as exec
    # works, the image's init is still starting and every clone goes on with that work
    # (measured: clone -> exec p50 370-423 ms over three fresh snapshots, 326-335 once ready).
    uid = e.ig("inspect", "vm", "snapsrc", "-t", "{{.UID}}").strip()
    wait_marker(os.path.join(e.root, "vm", uid, "console.log"), time.time() + 120)
    takes, paused = [], []
    for i in range(3):
        t0 = time.monotonic()
        e.ig("snapshot", "create", "snapsrc", f"bench{i}")
        takes.append(time.monotonic() - t0)
        paused.append(int(e.ig("inspect", "snapshot", f"bench{i}", "-t", "{{.Status.PausedMs}}").strip()) / 1000)
    sizes = e.ig("inspect", "snapshot", "bench0", "-t", "{{.Status.StateSize}} state, {{.Status.DiskSize}} disk").strip()
    cold, clone, cold_tries, clone_tries = [], [], [], []
    for i in range(runs):
        # Taking turns at going first, as in `boot`: neither side always follows the other's removal.
        for kind in (("cold", "clone") if i % 2 == 0 else ("clone", "cold")):
            name = f"{kind}{i}"
            args = ["run", "busybox", "--memory", "128MB"] if kind == "cold" else ["run", "--from-snapshot", "bench0"]
            t0 = time.monotonic()
            e.ig(*args, "--name", name)
            tries = until_exec(e, name)
            (cold if kind == "cold" else clone).append(time.monotonic() - t0)
            (cold_tries if kind == "cold" else clone_tries).append(tries)
            e.ig("rm", "-f", name)
    e.ig("rm", "-f", "snapsrc")
    for i in range(3):
        e.ig("snapshot", "rm", f"bench{i}")
    print(f"clone vs cold start, busybox --memory 128MB ({runs} runs each, taking turns at going first; snapshot of a booted VM)")
    print(f"  ignite run IMAGE -> exec works                   {fmt(cold)}   exec tries p50 {pct(cold_tries, 50):.0f}")
    print(f"  ignite run --from-snapshot -> exec works         {fmt(clone)}   exec tries p50 {pct(clone_tries, 50):.0f}")
    lo, hi = ratio_interval(clone, cold)
    print(f"  ratio clone / cold (p50)                         {pct(clone, 50) / pct(cold, 50):.3f}   (issue 15: <= 0.25; "
          f"90% bootstrap interval {lo:.3f}-{hi:.3f})")
    print(f"  ignite snapshot create (3 of one running VM)     {fmt(takes)}")
    print(f"  the guest paused meanwhile                       {fmt(paused)}   ({sizes})")


def meminfo():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":", 1)
        m[k] = int(v.split()[0]) * 1024
    return m


def vmm_pids(uids):
    """uid -> the QEMU process of that VM (it names itself ignite-<uid>)."""
    want, out = {f"ignite-{u}": u for u in uids}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and b"-name" in argv:
            n = argv[argv.index(b"-name") + 1].decode()
            if n in want:
                out[want[n]] = int(p)
    return out


def pss_mib(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def host_leftovers():
    netns = len([n for n in os.listdir("/run/netns")]) if os.path.isdir("/run/netns") else 0
    return netns


KSM = "/sys/kernel/mm/ksm/"


def bench_dense(e, n, ksm, tcg_cache):
    """`ksm`: the host's same-page merging turned on for the run (and back as it was after);
    `tcg_cache`: the Configuration's spec.tcgCache (QEMU's translation cache per VM)."""
    names = [f"d{i}" for i in range(n)]
    if tcg_cache:
        path = os.path.join(e.tmp, "config.yaml")
        with open(path, "w") as f:
            f.write(f"apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nmetadata:\n  name: dense\n"
                    f"spec:\n  tcgCache: {tcg_cache}\n")
        e.env["IGNITE_CONFIG"] = path
    saved = {f: open(KSM + f).read().strip() for f in ("run", "pages_to_scan", "sleep_millisecs")} if ksm else {}
    try:
        for f, v in (("pages_to_scan", "4000"), ("sleep_millisecs", "10"), ("run", "1")) if ksm else ():
            open(KSM + f, "w").write(v)
        dense_run(e, names, ksm, tcg_cache)
    finally:
        e.env.pop("IGNITE_CONFIG", None)
        for f in ("run", "pages_to_scan", "sleep_millisecs"):
            if f in saved:
                open(KSM + f, "w").write(saved[f])


def dense_run(e, names, ksm, tcg_cache):
    n = len(names)
    netns0 = host_leftovers()
    # Settle the page cache, then take the baseline.
    subprocess.run(["sync"])
    used0 = meminfo()
    t0 = time.monotonic()
    for name in names:
        e.ig("run", "busybox", "--name", name, "--memory", "64MB")
    started = time.monotonic() - t0
    for name in names:
        until_exec(e, name, 600)
    ready = time.monotonic() - t0
    for name in names:  # every one answers, all running at once
        e.ig("exec", name, "true")
    ksm_note = ""
    if ksm:
        # Same-page merging of the guests' memory (QEMU marks it mergeable): two full scans.
        scans0 = int(open(KSM + "full_scans").read())
        t_end = time.monotonic() + 300
        while int(open(KSM + "full_scans").read()) < scans0 + 2 and time.monotonic() < t_end:
            time.sleep(0.5)
        ksm_note = f", {int(open(KSM + 'pages_sharing').read()) * 4 // 1024} MiB shared by KSM"
    m = meminfo()
    used = (m["MemTotal"] - m["MemAvailable"]) - (used0["MemTotal"] - used0["MemAvailable"])
    uids = [e.ig("inspect", "vm", name, "-t", "{{.UID}}").strip() for name in names]
    pids = vmm_pids(uids)
    pss = [pss_mib(p) for p in pids.values()]
    rss = [rss_mib(p) for p in pids.values()]
    cache = f"translation cache {tcg_cache}" if tcg_cache else "default translation cache (256MB)"
    print(f"dense: {n} busybox VMs, --memory 64MB each, jailed, TCG, {cache} (KSM {'on' if ksm else 'off'}{ksm_note})")
    print(f"  all started (ignite run x{n}, one after another)   {started:8.1f} s")
    print(f"  all answering exec                                 {ready:8.1f} s")
    print(f"  host used memory over the {n}, per VM              {used / n / 2**20:8.1f} MiB   (issue 15: <= 60 MiB)")
    print(f"  QEMU PSS per VM                                    p50 {pct(pss, 50):6.1f} MiB   sum/n {sum(pss) / len(pss):6.1f} MiB   ({len(pss)} VMMs found)")
    print(f"  QEMU RSS per VM                                    p50 {pct(rss, 50):6.1f} MiB")
    t1 = time.monotonic()
    subprocess.run([IGNITE, "rm", "-f", *names], env=e.env, check=True, capture_output=True)
    print(f"  all removed                                        {time.monotonic() - t1:8.1f} s")
    left = {"VMs": len(e.ig("ps", "-a", "-q").split()), "VMMs": len(vmm_pids(uids)), "netns": host_leftovers() - netns0}
    print(f"  left behind                                        {left}")
    if any(left.values()):
        raise SystemExit(f"dense: left behind {left}")


def wait_running(e, name, deadline_s=120):
    t_end = time.monotonic() + deadline_s
    while time.monotonic() < t_end:
        p = subprocess.run([IGNITE, "inspect", "vm", name, "-t", "{{.Status.Running}}"], env=e.env,
                           capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip() == "true":
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"VM {name} did not start")


def wait_gone(e, name, deadline_s=120):
    t_end = time.monotonic() + deadline_s
    while subprocess.run([IGNITE, "inspect", "vm", name], env=e.env, capture_output=True).returncode == 0:
        if time.monotonic() > t_end:
            raise SystemExit(f"VM {name} was not removed")
        time.sleep(0.05)


def manifest(name):
    return (f"apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: {name}\nspec:\n"
            f"  image:\n    oci: busybox\n  cpus: 1\n  memory: 128MB\nstatus:\n  running: true\n")


def bench_reconcile(e, runs):
    ignited = os.path.join(BIN, "ignited")
    # Reference: the same VM by hand.
    ref = []
    for i in range(runs):
        t0 = time.monotonic()
        e.ig("run", "busybox", "--name", f"ref{i}", "--cpus", "1", "--memory", "128MB")
        ref.append(wait_running(e, f"ref{i}") - t0)
        e.ig("rm", "-f", f"ref{i}")
    # Manifest directory.
    mdir = os.path.join(e.tmp, "manifests")
    os.makedirs(mdir)
    d = subprocess.Popen([ignited, "daemon", "--manifest-dir", mdir, "--interval", "30", "--socket", "none"],
                         env=e.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    md = []
    try:
        time.sleep(1)
        for i in range(runs):
            path = os.path.join(mdir, f"md{i}.yaml")
            with open(path + ".tmp", "w") as f:
                f.write(manifest(f"md{i}"))
            t0 = time.monotonic()
            os.rename(path + ".tmp", path)
            md.append(wait_running(e, f"md{i}") - t0)
            os.remove(path)
            wait_gone(e, f"md{i}")
    finally:
        d.terminate()
        d.wait()
    # Git (file:// bare repository), polled every 2 s.
    bare, work = os.path.join(e.tmp, "vms.git"), os.path.join(e.tmp, "work")
    sh("git", "init", "-q", "--bare", "-b", "main", bare)
    sh("git", "clone", "-q", f"file://{bare}", work)
    g = ["git", "-C", work, "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    os.makedirs(os.path.join(work, "vms"))
    with open(os.path.join(work, "vms", "README"), "w") as f:
        f.write("VMs\n")
    sh(*g, "add", ".")
    sh(*g, "commit", "-q", "-m", "init")
    sh(*g, "push", "-q", "origin", "HEAD:main")
    d = subprocess.Popen([ignited, "gitops", f"file://{bare}", "--branch", "main", "--path", "vms", "--interval", "2",
                          "--read-only", "--socket", "none"], env=e.env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    gi = []
    try:
        time.sleep(1)
        for i in range(runs):
            with open(os.path.join(work, "vms", f"gi{i}.yaml"), "w") as f:
                f.write(manifest(f"gi{i}"))
            sh(*g, "add", ".")
            sh(*g, "commit", "-q", "-m", f"add gi{i}")
            sh(*g, "push", "-q", "origin", "HEAD:main")
            t0 = time.monotonic()
            gi.append(wait_running(e, f"gi{i}") - t0)
            sh(*g, "rm", "-q", f"vms/gi{i}.yaml")
            sh(*g, "commit", "-q", "-m", f"remove gi{i}")
            sh(*g, "push", "-q", "origin", "HEAD:main")
            wait_gone(e, f"gi{i}")
    finally:
        d.terminate()
        d.wait()
    print(f"reconcile latency to a running VM (busybox, 128 MB; {runs} runs each)")
    print(f"  ignite run (reference)                 {fmt(ref)}")
    print(f"  ignited daemon: manifest written       {fmt(md)}   ratio to run {pct(md, 50) / pct(ref, 50):.2f}")
    print(f"  ignited gitops: git push (interval 2s) {fmt(gi)}   ratio to run {pct(gi, 50) / pct(ref, 50):.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["boot", "jail", "disk", "vmm", "import", "net", "exec", "reconcile", "clone", "dense", "all"])
    ap.add_argument("--runs", type=int)
    ap.add_argument("--ksm", action="store_true", help="dense: turn on the host's KSM for the run")
    ap.add_argument("--tcg-cache", help="dense: the Configuration's spec.tcgCache, e.g. 16MB")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks run as root (they boot VMs and apply image layers)")
    e = Env()
    try:
        if a.what in ("boot", "all"):
            bench_boot(e, a.runs or 100)
        if a.what in ("jail", "all"):
            bench_jail(e, a.runs or 8)
        if a.what in ("disk", "all"):
            bench_disk(e, a.runs or 10)
        if a.what in ("vmm", "all"):
            bench_vmm(e, a.runs or 5)
        if a.what in ("import", "all"):
            bench_import(e, a.runs or 3)
        if a.what in ("net", "all"):
            bench_net(e, a.runs or 20)
        if a.what in ("exec", "all"):
            bench_exec(e, a.runs or 50)
        if a.what in ("reconcile", "all"):
            bench_reconcile(e, a.runs or 5)
        if a.what in ("clone", "all"):
            bench_clone(e, a.runs or 32)
        if a.what in ("dense", "all"):
            bench_dense(e, a.runs or 100, a.ksm, a.tcg_cache)
    finally:
        e.close()


if __name__ == "__main__":
    main()

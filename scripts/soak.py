#!/usr/bin/env python3
"""The soak: VMs used the way people use them, several at once, for a while, with every
answer checked.

    scripts/soak.py [--seconds 300] [--workers 3] [--seed N] [--bin DIR]

Each worker owns one VM name and, one after another, takes random steps on it while the other
workers do the same on theirs (so the host side — addresses, locks, namespaces, cgroups, the
store — is shared and contended, and each VM's own story is still exact):
  run (cold) or run --from-snapshot (a clone of a shared snapshot); stop then start; a second
  stop and start (refused, changing nothing); kill then start; snapshot create of its VM, a
  clone of that, and the snapshot removed; cp of random bytes in and back out; rm -f.
After every step on a running VM, `exec cat` must find the token that VM last synced to its
disk (written by exec after each run), a clone must have its own hostname and its snapshot's
token, and cp must give the bytes back unchanged. No command may hang (180 s), panic, or
fail. At the end every VM is removed and nothing of them may be left (VMMs, network
namespaces, VM directories). The last line is `soak: N steps, F failures`; the exit status is
non-zero on any failure. Not part of `scripts/test.sh` (it runs for minutes by design).
"""
import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 180


class Failure(Exception):
    pass


def netns():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.strip()]


class Soak:
    def __init__(self, args):
        self.ignite = os.path.join(args.bin, "ignite")
        self.tmp = tempfile.mkdtemp(prefix="ignite-soak.")
        self.root = os.path.join(self.tmp, "root")
        self.env = dict(os.environ, IGNITE_ROOT=self.root)
        for k in ("IGNITE_FAULT", "IGNITE_CONFIG"):
            self.env.pop(k, None)
        if "IGNITE_AGENT" not in self.env:
            out = subprocess.run([os.path.join(REPO, "scripts/build-agent.sh")], check=True, capture_output=True, text=True)
            self.env["IGNITE_AGENT"] = out.stdout.strip().splitlines()[-1]
        vmlinux = subprocess.run([os.path.join(REPO, "images/kernel/build.sh")], check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1]
        bb = os.path.join(self.tmp, "bb")
        subprocess.run([os.path.join(REPO, "images/busybox/build.sh"), bb], check=True, capture_output=True)
        self.ig("kernel", "import", vmlinux, "--name", "localhost/ignite-kernel:6.1")
        self.ig("image", "import", f"oci:{bb}/oci:latest", "--name", "busybox")
        self.netns_before = set(netns())
        self.lock = threading.Lock()
        self.steps, self.failures = 0, []

    def ig(self, *args, check=True):
        try:
            p = subprocess.run([self.ignite, *args], env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failure(f"`ignite {' '.join(args)}` did not end within {TIMEOUT} s")
        if "panicked" in p.stderr:
            raise Failure(f"`ignite {' '.join(args)}` panicked: {p.stderr.strip()[-400:]}")
        if check and p.returncode != 0:
            raise Failure(f"`ignite {' '.join(args)}` failed ({p.returncode}): {p.stderr.strip()[-400:]}")
        return p

    def exec_out(self, vm, *cmd):
        return self.ig("exec", vm, *cmd).stdout.strip()

    def base_snapshot(self):
        """A snapshot of a booted busybox VM, that every worker may clone."""
        self.ig("run", "busybox", "--name", "soak-base", "--memory", "128MB")
        deadline = time.monotonic() + 120
        while self.ig("exec", "--timeout", "5", "soak-base", "sh", "-c", "echo base > /root/token && sync",
                      check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise Failure("the base VM never answered exec")
            time.sleep(0.1)
        self.ig("snapshot", "create", "soak-base", "soak-base")
        self.ig("rm", "-f", "soak-base")

    def worker(self, w, seed, until):
        rng = random.Random(seed * 1000 + w)
        name, running, token = f"soak{w}", False, None

        def write_token():
            t = str(rng.randrange(10**9))
            self.ig("exec", name, "sh", "-c", f"echo {t} > /root/token && sync")
            return t

        while time.monotonic() < until:
            step = rng.choice(["run", "clone", "stop-start", "twice", "kill-start", "snapshot-clone", "cp", "rm"])
            if not running and step not in ("run", "clone"):
                step = rng.choice(["run", "clone"])
            try:
                if step in ("run", "clone"):
                    if running:
                        self.ig("rm", "-f", name)
                    if step == "run":
                        self.ig("run", "busybox", "--name", name, "--memory", "128MB")
                    else:
                        self.ig("run", "--from-snapshot", "soak-base", "--name", name)
                        if self.exec_out(name, "cat", "/root/token") != "base":
                            raise Failure(f"clone {name} lacks its snapshot's token")
                    running = True
                    token = write_token()
                elif step == "stop-start":
                    self.ig("stop", name)
                    self.ig("start", name)
                elif step == "twice":
                    self.ig("stop", name)
                    if self.ig("stop", name, check=False).returncode == 0:
                        raise Failure(f"a second stop of {name} succeeded")
                    self.ig("start", name)
                    if self.ig("start", name, check=False).returncode == 0:
                        raise Failure(f"a second start of {name} succeeded")
                elif step == "kill-start":
                    self.ig("kill", name)
                    self.ig("start", name)
                elif step == "snapshot-clone":
                    snap, clone = f"{name}-snap", f"{name}-clone"
                    self.ig("snapshot", "create", name, snap)
                    self.ig("run", "--from-snapshot", snap, "--name", clone)
                    if self.exec_out(clone, "cat", "/root/token") != token:
                        raise Failure(f"clone {clone} lacks {name}'s token {token}")
                    if self.exec_out(clone, "hostname") != clone:
                        raise Failure(f"clone {clone} does not have its own hostname")
                    self.ig("rm", "-f", clone)
                    self.ig("snapshot", "rm", snap)
                elif step == "cp":
                    data = os.urandom(rng.randrange(1, 512 * 1024))
                    src, back = os.path.join(self.tmp, f"{name}.in"), os.path.join(self.tmp, f"{name}.out")
                    open(src, "wb").write(data)
                    self.ig("cp", src, f"{name}:/root/blob")
                    if self.exec_out(name, "md5sum", "/root/blob").split()[0] != hashlib.md5(data).hexdigest():
                        raise Failure(f"cp into {name} changed the bytes")
                    if os.path.exists(back):
                        os.remove(back)
                    self.ig("cp", f"{name}:/root/blob", back)
                    if open(back, "rb").read() != data:
                        raise Failure(f"cp out of {name} changed the bytes")
                elif step == "rm":
                    self.ig("rm", "-f", name)
                    running = False
                if running and self.exec_out(name, "cat", "/root/token") != token:
                    raise Failure(f"{name} lost its token {token} after {step}")
                with self.lock:
                    self.steps += 1
            except Failure as e:
                with self.lock:
                    self.failures.append(f"{name} {step}: {e}")
                print(f"soak: FAILED {name} {step}: {e}", flush=True)
                for vm in (name, f"{name}-clone"):
                    self.ig("rm", "-f", vm, check=False)
                self.ig("snapshot", "rm", f"{name}-snap", check=False)
                running = False
        self.ig("rm", "-f", name, check=False)

    def leftovers(self):
        """What of this soak's VMs is left after all were removed."""
        left = []
        vms = self.ig("ps", "-a", "-q").stdout.split()
        if vms:
            left.append(f"VMs {vms}")
        vmdir = os.path.join(self.root, "vm")
        uids = [d for d in os.listdir(vmdir) if not d.startswith(".")] if os.path.isdir(vmdir) else []
        if uids:
            left.append(f"VM directories {uids}")
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
                    environ = open(f"/proc/{p}/environ", "rb").read()
                except OSError:
                    continue
                if argv[0].endswith(b"ignite-spawn") and self.root.encode() in b"\0".join(argv) + environ:
                    left.append(f"supervisor {p}")
        left += [f"network namespace {n}" for n in set(netns()) - self.netns_before if n.startswith("ignite-")]
        return left

    def close(self):
        self.ig("rm", "-f", *self.ig("ps", "-a", "-q").stdout.split(), check=False)
        for s in self.ig("snapshot", "ls", "-q", check=False).stdout.split():
            self.ig("snapshot", "rm", s, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bin", default=os.path.join(REPO, "target", "debug"), help="directory of ignite and ignite-spawn")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak: needs root (network namespaces, CNI, iptables)")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if not os.path.exists(os.path.join(args.bin, "ignite")):
        subprocess.run(["cargo", "build", "-p", "ignite-cli", "-p", "ignite-supervisor"], cwd=REPO, check=True)
    print(f"soak: seed {args.seed}, {args.workers} workers, {args.seconds:.0f} s", flush=True)
    s = Soak(args)
    t = time.monotonic()
    try:
        s.base_snapshot()
        until = time.monotonic() + args.seconds
        threads = [threading.Thread(target=s.worker, args=(w, args.seed, until)) for w in range(args.workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        s.ig("snapshot", "rm", "soak-base", check=False)
        for l in s.leftovers():
            s.failures.append(f"left behind: {l}")
            print(f"soak: FAILED: left behind: {l}", flush=True)
    finally:
        s.close()
    print(f"soak: {s.steps} steps, {len(s.failures)} failures ({time.monotonic() - t:.0f} s, seed {args.seed})")
    sys.exit(1 if s.failures else 0)


if __name__ == "__main__":
    main()

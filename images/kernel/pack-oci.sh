#!/usr/bin/env bash
# Packs a vmlinux as a kernel OCI image (an OCI image layout directory), the way Ignite's
# kernel images carry it: one gzip'd tar layer holding /boot/vmlinux.
#
#   images/kernel/pack-oci.sh VMLINUX OUTDIR [TAG]      (TAG defaults to "latest")
#
# then e.g.  ignite kernel import oci:OUTDIR:TAG   or   skopeo copy oci:OUTDIR:TAG docker://...
#
# Deterministic: the same vmlinux gives the same layer, config and manifest digests (entries
# owned by 0:0, fixed modes, mtime $SOURCE_DATE_EPOCH or 0, gzip header without name or
# time). If OUTDIR already is an OCI layout, the image is added to it and TAG is moved to it;
# other tags are kept. Prints the manifest digest on stdout.
set -euo pipefail

die() { echo "kernel/pack-oci.sh: $*" >&2; exit 1; }
if [ $# -lt 2 ] || [ $# -gt 3 ]; then echo "usage: ${0##*/} VMLINUX OUTDIR [TAG]" >&2; exit 2; fi
vmlinux=$1 outdir=$2 tag=${3:-latest}

command -v python3 >/dev/null 2>&1 || die "python3 not found: install it with 'apt-get install python3'"
[ -f "$vmlinux" ] || die "$vmlinux: no such file"
[ "$(head -c4 "$vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] ||
  die "$vmlinux is not an ELF file (a vmlinux is expected, not a bzImage)"
# OCI reference tag grammar: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "invalid tag '$tag'"
if [ -e "$outdir" ] && [ ! -d "$outdir" ]; then die "$outdir exists and is not a directory"; fi
if [ -d "$outdir" ] && [ -n "$(ls -A "$outdir")" ] && [ ! -f "$outdir/oci-layout" ]; then
  die "$outdir is neither empty nor an OCI image layout"
fi

exec python3 - "$vmlinux" "$outdir" "$tag" "${SOURCE_DATE_EPOCH:-0}" <<'PY'
import datetime, gzip, hashlib, io, json, os, re, sys, tarfile, tempfile

vmlinux, outdir, tag, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
REF = "org.opencontainers.image.ref.name"


def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def atomic_write(path, data):
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def put_blob(data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(outdir, "blobs", "sha256", digest)
    if not os.path.exists(path):
        atomic_write(path, data)
    return {"digest": "sha256:" + digest, "size": len(data)}


with open(vmlinux, "rb") as f:
    kernel = f.read()
m = re.search(rb"Linux version (\S+)", kernel)
version = m.group(1).decode(errors="replace") if m else "unknown"

# The layer: boot/ and boot/vmlinux, root-owned, fixed mtime.
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    d = tarfile.TarInfo("boot")
    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, epoch
    d.uid = d.gid = 0
    d.uname = d.gname = ""
    tar.addfile(d)
    fi = tarfile.TarInfo("boot/vmlinux")
    fi.size, fi.mode, fi.mtime = len(kernel), 0o644, epoch
    fi.uid = fi.gid = 0
    fi.uname = fi.gname = ""
    tar.addfile(fi, io.BytesIO(kernel))
layer_tar = raw.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=9) as g:
    g.write(layer_tar)
layer_gz = gz.getvalue()

os.makedirs(os.path.join(outdir, "blobs", "sha256"), exist_ok=True)
layer_desc = dict(put_blob(layer_gz), mediaType=LAYER)
created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
config = {
    "architecture": "amd64",
    "os": "linux",
    "created": created,
    "config": {"Labels": {"org.opencontainers.image.version": version,
                          "org.opencontainers.image.title": "ignite guest kernel (/boot/vmlinux)"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    "history": [{"created": created, "created_by": "images/kernel/pack-oci.sh: boot/vmlinux"}],
}
config_desc = dict(put_blob(dumps(config)), mediaType=CONFIG)
manifest = {
    "schemaVersion": 2,
    "mediaType": MANIFEST,
    "config": config_desc,
    "layers": [layer_desc],
    "annotations": {"org.opencontainers.image.version": version},
}
manifest_desc = dict(put_blob(dumps(manifest)), mediaType=MANIFEST)
manifest_desc["annotations"] = {REF: tag}
manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}

index_path = os.path.join(outdir, "index.json")
index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
if os.path.exists(index_path):
    with open(index_path) as f:
        old = json.load(f)
    # keep the other tags; this tag moves to the new manifest
    index["manifests"] = [m for m in old.get("manifests", []) if m.get("annotations", {}).get(REF) != tag]
index["manifests"].append(manifest_desc)
atomic_write(os.path.join(outdir, "oci-layout"), dumps({"imageLayoutVersion": "1.0.0"}))
atomic_write(index_path, dumps(index))
print("kernel/pack-oci.sh: %s:%s = Linux %s, manifest %s, layer %s (%d bytes)"
      % (outdir, tag, version, manifest_desc["digest"], layer_desc["digest"], layer_desc["size"]), file=sys.stderr)
print(manifest_desc["digest"])
PY

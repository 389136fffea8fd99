#!/usr/bin/env python3
"""Packs a root filesystem directory as a single-layer OCI image, without Docker.

    oci-pack.py ROOTFS OCI_DIR [--tag TAG] [--docker-archive OUT.tar --repo-tag NAME:TAG]
                [--entrypoint ...] [--cmd ...]

Writes (or adds to) an OCI image layout at OCI_DIR with index.json naming the manifest by
TAG (annotation org.opencontainers.image.ref.name), and optionally a `docker save`-style
archive of the same image. Deterministic: entries sorted, mtimes kept, gzip header mtime 0,
so equal trees give equal digests. Ownership, modes, symlinks, hardlinks and device nodes are
taken from the tree as it is on disk (run as root to keep root-owned files root-owned).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile


def layer_tar(rootfs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                entries.append(os.path.join(dirpath, name))
        entries.sort(key=lambda p: os.path.relpath(p, rootfs))
        for path in entries:
            rel = os.path.relpath(path, rootfs)
            info = tar.gettarinfo(path, arcname=rel)
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def put_blob(oci_dir, data):
    digest = hashlib.sha256(data).hexdigest()
    d = os.path.join(oci_dir, "blobs", "sha256")
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, digest)
    if not os.path.exists(p):
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        os.rename(p + ".tmp", p)
    return "sha256:" + digest, len(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rootfs")
    ap.add_argument("oci_dir")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--docker-archive")
    ap.add_argument("--repo-tag")
    ap.add_argument("--cmd", nargs="*")
    ap.add_argument("--entrypoint", nargs="*")
    a = ap.parse_args()

    raw = layer_tar(a.rootfs)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    os.makedirs(a.oci_dir, exist_ok=True)
    with open(os.path.join(a.oci_dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    layer_digest, layer_size = put_blob(a.oci_dir, gz)
    cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if a.cmd is not None:
        cfg["Cmd"] = a.cmd
    if a.entrypoint is not None:
        cfg["Entrypoint"] = a.entrypoint
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "ignite images/oci-pack.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest, config_size = put_blob(a.oci_dir, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest, manifest_size = put_blob(a.oci_dir, manifest_bytes)
    index_path = os.path.join(a.oci_dir, "index.json")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag]
    index["manifests"].append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": a.tag},
    })
    with open(index_path + ".tmp", "w") as f:
        json.dump(index, f, sort_keys=True)
    os.rename(index_path + ".tmp", index_path)

    if a.docker_archive:
        repo_tag = a.repo_tag or ("image:" + a.tag)
        cfg_name = config_digest.split(":")[1] + ".json"
        layer_name = diff_id.split(":")[1] + "/layer.tar"
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as t:
            def add(name, data):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = 0o644
                t.addfile(ti, io.BytesIO(data))
            add(cfg_name, config_bytes)
            add(layer_name, raw)
            add("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [repo_tag], "Layers": [layer_name]}]).encode())
            add("repositories", json.dumps({repo_tag.rsplit(":", 1)[0]: {repo_tag.rsplit(":", 1)[1]: diff_id.split(":")[1]}}).encode())
        with open(a.docker_archive + ".tmp", "wb") as f:
            f.write(out.getvalue())
        os.rename(a.docker_archive + ".tmp", a.docker_archive)
    print(manifest_digest)


if __name__ == "__main__":
    main()

"""A minimal valid OCI archive (one empty layer) for deploy tests that need an image's
archive but not a real image: what `edgebundle image build` writes, without an engine."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return digest


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write(path: Path, tag: str, architecture: str = "amd64", content: bytes = b"\0" * 1024) -> str:
    """Write the archive holding image `tag`; returns its OCI manifest (as ECR stores it).
    Different `content` gives a different image digest."""
    with tarfile.open(path, "w") as tar:
        layer = gzip.compress(content, mtime=0)
        config = json.dumps({"architecture": architecture, "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(content).hexdigest()]}}).encode()
        layer_digest, config_digest = _blob(tar, layer), _blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_digest}", "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{layer_digest}", "size": len(layer)}]})
        manifest_digest = _blob(tar, manifest.encode())
        _file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _file(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{manifest_digest}",
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}]}).encode())
    return manifest

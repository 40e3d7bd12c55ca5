"""Train the embedded testbed from scratch: the feature network, the routing model (+ its early checkpoint for
AutoGuidance), the masking twin and the text-to-image model (`t2i`: TextDiT + its word encoder, trained jointly).
`make testbed` runs this; the results are committed under checkpoints/.

    python -m harness.testbed.train [--only features|routing|masking|t2i] [--steps N] [--out checkpoints]

Flow matching with uniform t (the sampler starts at t = 0, so every t must be trained), label dropout 0.1 (CFG),
EMA weights with warm-up. Routing: TREAD, 50% of the tokens routed around the middle blocks every step. Masking:
MaskDiT, 50% of the tokens dropped before the encoder, the loss on kept tokens plus 0.1 x the loss on masked ones.
T2I: scenes and prompts of harness/testbed/scenes.py, TREAD routing as above, prompt dropout 0.1 to the empty prompt;
`make testbed` trains it in two stages, the second (`--init`) at a lower learning rate from the first's EMA weights.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.transforms.functional import gaussian_blur

from harness.models import ARCHS, ModelSpec
from harness.models.adapters import TextCondition
from harness.models.dit import SparseDiT
from harness.models.tokens import select_tokens
from harness.models.textdit import TextDiT
from harness.testbed import data, detector, scenes, words
from harness.testbed.featnet import ShapeNet

ARCH = "Testbed-S/4"
T2I_ARCH = "TextTestbed-S/4"
PROMPT_DROPOUT = 0.1
ROUTE = (1, 4)
TRAIN_GAMMA = 0.5
LABEL_DROPOUT = 0.1
MAE_WEIGHT = 0.1
WARMUP = 200  # linear learning-rate warm-up steps


def model_spec(sparsity: str) -> ModelSpec:
    """The testbed model of the given sparsity, as suites/testbed.toml declares it."""
    return ModelSpec(ARCH, sparsity=sparsity, route=ROUTE if sparsity == "routing" else None)


@functools.lru_cache(maxsize=2)
def _images(n: int) -> tuple:
    return data.draw(n, data.TRAIN_SEED)


def _pool(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _images(n)
    return torch.from_numpy(data.to_model_space(images)).to(device), torch.from_numpy(labels).to(device)


def _save(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


class Ema:
    """Exponential moving average of weights with the usual warm-up, min(decay, (1 + n) / (10 + n))."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)


def _augment(x: torch.Tensor) -> torch.Tensor:
    """The imperfections of generated images, so that feature distances measure shapes, sizes and colours rather
    than them: a random amount of blur, a small per-channel colour shift and gain, and pixel noise (sigma <= 0.15)."""
    b = len(x)
    amount = torch.rand(b, 1, 1, 1, device=x.device)
    x = x + amount * (gaussian_blur(x, kernel_size=5, sigma=1.0) - x)
    x = x * (1 + 0.05 * torch.randn(b, 3, 1, 1, device=x.device)) + 0.05 * torch.randn(b, 3, 1, 1, device=x.device)
    return x + torch.rand(b, 1, 1, 1, device=x.device) * 0.15 * torch.randn_like(x)


def train_features(out: Path, steps: int, batch: int, seed: int, device: torch.device, pool: int = 60_000) -> dict:
    """Train ShapeNet on augmented images (see _augment); returns its held-out accuracy."""
    torch.manual_seed(seed)
    start = time.time()
    x_all, y_all = _pool(pool, device)
    net = ShapeNet(len(data.CLASSES)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for step in range(steps):
        idx = torch.randint(len(x_all), (batch,), device=device)
        x, y = x_all[idx], y_all[idx]
        x = _augment(x)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            print(f"features step {step} loss {loss.item():.4f}", flush=True)
    net.eval()
    images, labels = data.draw(4000, data.HELDOUT_SEED + 7)
    with torch.no_grad():
        _, logits = net.features_and_logits(torch.from_numpy(images).permute(0, 3, 1, 2).to(device))
    acc = float((logits.argmax(1).cpu().numpy() == labels).mean())
    _save(net.cpu(), out / "testbed_features.safetensors")
    print(f"features held-out accuracy {acc:.4f}", flush=True)
    return {"steps": steps, "batch": batch, "heldout_accuracy": acc, "seconds": round(time.time() - start)}


def train_diffusion(sparsity: str, out: Path, steps: int, batch: int, seed: int, lr: float,
                    device: torch.device, pool: int = 100_000) -> dict:
    """Train one testbed diffusion model; saves EMA weights, and for routing the EMA at 1/16 of training."""
    torch.manual_seed(seed)
    spec = model_spec(sparsity)
    config, _ = spec.config()
    net = SparseDiT(config).to(device)
    ema = Ema(net, 0.999)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    x_all, y_all = _pool(pool, device)
    n_tok = config.num_tokens
    early_step = steps // 16
    log: list[dict] = []
    net.train()
    start = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(x_all), (batch,), device=device)
        x1, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(batch, device=device) < LABEL_DROPOUT] = config.num_classes  # null class for CFG
        t = torch.rand(batch, device=device)
        z = torch.randn_like(x1)
        xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * z
        target = x1 - z
        ids = select_tokens(batch, n_tok, TRAIN_GAMMA, None, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            v = net(xt, t, y, TRAIN_GAMMA, ids=ids)
        err = (v.float() - target) ** 2
        if sparsity == "masking":  # per-token weights: 1 on kept tokens, MAE_WEIGHT on masked ones
            p = config.patch_size
            side = config.input_size // p
            keep = torch.zeros(batch, n_tok, device=device).scatter_(1, ids, 1.0).view(batch, 1, side, 1, side, 1)
            weight = (keep + MAE_WEIGHT * (1 - keep)).expand(-1, 1, -1, p, -1, p).reshape(batch, 1, *x1.shape[2:])
            loss = (err * weight).sum() / (weight.sum() * err.shape[1])
        else:
            loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(net)
        if step == early_step and sparsity == "routing":
            _save(copy.deepcopy(ema.model).cpu(), out / "testbed_routing_early.safetensors")
        if step % 100 == 0 or step == steps:
            rate = step / (time.time() - start)
            entry = {"step": step, "loss": round(loss.item(), 5), "cond_gap": round(_cond_gap(ema.model), 4)}
            log.append(entry)
            print(f"{sparsity} step {step}/{steps} loss {entry['loss']:.4f} cond_gap {entry['cond_gap']:.3f} "
                  f"{rate:.2f} it/s eta {(steps - step) / rate / 60:.1f} min", flush=True)
    _save(ema.model.cpu(), out / f"testbed_{sparsity}.safetensors")
    return {"steps": steps, "batch": batch, "lr": lr, "early_step": early_step if sparsity == "routing" else None,
            "seconds": round(time.time() - start), "log": log}


def _degraded_scenes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list, list]:
    """Training-grammar scenes with the faults samples have: a quarter with two objects run together, a tenth with
    an object cut by a line, then _augment's blur, colour shift and noise, and heavy noise on a fifth.
    (uint8 images, coverages, shapes)."""
    grammar = scenes.training_prompts()
    objects = []
    for tag in rng.integers(len(scenes.TASKS), size=n):
        pool = grammar[scenes.TASKS[tag]]
        objs = scenes.scene_objects(pool[rng.integers(len(pool))], rng)
        if len(objs) >= 2 and rng.random() < 0.25:
            a, b = objs[0], objs[1]
            reach = 0.7 * (a["radius"] + b["radius"])
            b["x"], b["y"] = (float(np.clip(a[k] + rng.uniform(-reach, reach), 4, scenes.IMAGE_SIZE - 4))
                              for k in ("x", "y"))
        objects.append(objs)
    images, masks = scenes.render(objects, with_masks=True)
    grid = np.mgrid[: scenes.IMAGE_SIZE, : scenes.IMAGE_SIZE][::-1] + 0.5  # (x, y)
    for image, cover, objs in zip(images, masks, objects):
        if rng.random() < 0.1:
            o = objs[0]
            normal = rng.normal(size=2)
            side = ((grid[0] - o["x"]) * normal[0] + (grid[1] - o["y"]) * normal[1]) > rng.uniform(-0.3, 0.3) * o["radius"]
            image[(cover[0] > 0) & side] = round(scenes.BACKGROUND * 255)
            cover[0][side] = 0.0
    x = _augment(torch.from_numpy(data.to_model_space(images)))
    heavy = torch.rand(n, 1, 1, 1) < 0.2  # a fifth with the heavy grain of undertrained samples: specks are `other`
    x = x + heavy * torch.rand(n, 1, 1, 1) * 0.6 * torch.randn_like(x)
    images = (x * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images, masks, [[o["shape"] for o in objs] for objs in objects]


def train_detector(out: Path, steps: int, batch: int, seed: int, device: torch.device, pool: int = 20_000) -> dict:
    """Train the world detector's shape classifier on components of degraded scenes; returns held-out accuracy."""
    torch.manual_seed(seed)
    start = time.time()
    x_all, y_all = detector.labelled_crops(*_degraded_scenes(pool, np.random.default_rng(seed)))
    x_all, y_all = x_all.to(device), y_all.to(device)
    net = detector.ShapeClassifier().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for step in range(steps):
        idx = torch.randint(len(x_all), (batch,), device=device)
        loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            print(f"detector step {step} loss {loss.item():.4f}", flush=True)
    net.eval()
    x_test, y_test = detector.labelled_crops(*_degraded_scenes(4000, np.random.default_rng(scenes.REFERENCE_SEED)))
    with torch.no_grad():
        pred = net(x_test.to(device)).argmax(1).cpu()
    _save(net.cpu(), out / "t2i_testbed_detector.safetensors")
    acc = float((pred == y_test).float().mean())
    print(f"detector held-out accuracy {acc:.4f} on {len(y_test)} components", flush=True)
    return {"steps": steps, "batch": batch, "components": len(y_all), "heldout_accuracy": round(acc, 4),
            "heldout_other_fraction": round(float((y_test == len(detector.LABELS) - 1).float().mean()), 4),
            "seconds": round(time.time() - start)}


def t2i_spec() -> ModelSpec:
    """The text-to-image testbed model, as suites/t2i_testbed.toml declares it."""
    return ModelSpec(T2I_ARCH, sparsity="routing", route=ROUTE)


class TextToImage(torch.nn.Module):
    """TextDiT and its word encoder, trained (and averaged) as one module; saved as two files."""

    def __init__(self):
        super().__init__()
        self.net = TextDiT(t2i_spec().config()[0])
        self.text = words.WordEncoder()

    def forward(self, xt, t, ids, mask, gamma=0.0, token_ids=None):
        return self.net(xt, t, TextCondition(self.text(ids, mask), mask), gamma, ids=token_ids)

    def save(self, out: Path, name: str) -> None:
        _save(copy.deepcopy(self.net).cpu(), out / f"{name}.safetensors")
        _save(copy.deepcopy(self.text).cpu(), out / f"{name}_text.safetensors")


def train_t2i(out: Path, steps: int, batch: int, seed: int, lr: float, device: torch.device,
              pool: int = 30_000, early_step: int | None = None, init: Path | None = None) -> dict:
    """Train the text-to-image testbed model; saves EMA weights (t2i_testbed[_text]) and the EMA at `early_step`
    (default 1/16 of training) as t2i_testbed_early[_text] for AutoGuidance. The learning rate is constant after
    warm-up, so a run stopped at step k has the weights of a `--steps k` run. `init` (a folder holding
    t2i_testbed[_text].safetensors) continues from those EMA weights: model and EMA start there, with a fresh
    optimizer and warm-up, and the early checkpoint of the first stage is kept (early_step 0 writes none)."""
    torch.manual_seed(seed)
    start = time.time()
    prompts, images = scenes.training_draw(pool, scenes.TRAIN_SEED)
    x_all = torch.from_numpy(data.to_model_space(images)).to(device)
    ids_all, mask_all = (v.to(device) for v in words.tokenize(prompts))
    null_ids, null_mask = (v.to(device) for v in words.tokenize([""]))
    print(f"t2i: {pool} training scenes drawn in {time.time() - start:.0f} s", flush=True)
    model = TextToImage()
    if init is not None:
        model.net.load_state_dict(load_file(str(init / "t2i_testbed.safetensors")))
        model.text.load_state_dict(load_file(str(init / "t2i_testbed_text.safetensors")))
        early_step = 0
    model = model.to(device)
    ema = Ema(model, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
    n_tok = model.net.config.num_tokens
    early_step = steps // 16 if early_step is None else early_step
    log: list[dict] = []
    model.train()
    start = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(x_all), (batch,), device=device)
        x1, ids, mask = x_all[idx], ids_all[idx].clone(), mask_all[idx].clone()
        drop = torch.rand(batch, device=device) < PROMPT_DROPOUT  # the empty prompt, CFG's null caption
        ids[drop], mask[drop] = null_ids, null_mask
        t = torch.rand(batch, device=device)
        z = torch.randn_like(x1)
        xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * z
        token_ids = select_tokens(batch, n_tok, TRAIN_GAMMA, None, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            v = model(xt, t, ids, mask, TRAIN_GAMMA, token_ids)
        loss = ((v.float() - (x1 - z)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        if step == early_step:
            ema.model.save(out, "t2i_testbed_early")
        if step % 100 == 0 or step == steps:
            rate = step / (time.time() - start)
            entry = {"step": step, "loss": round(loss.item(), 5), "cond_gap": round(_text_gap(ema.model), 4)}
            log.append(entry)
            print(f"t2i step {step}/{steps} loss {entry['loss']:.4f} cond_gap {entry['cond_gap']:.3f} "
                  f"{rate:.2f} it/s eta {(steps - step) / rate / 60:.1f} min", flush=True)
        if step % 1000 == 0 or step == steps:
            ema.model.save(out, "t2i_testbed")  # a long run leaves usable weights behind at every 1000 steps
    return {"steps": steps, "batch": batch, "lr": lr, "early_step": early_step or None, "pool": pool,
            "seconds": round(time.time() - start), "log": log}


@torch.no_grad()
def _text_gap(model: TextToImage) -> float:
    """|v(prompt) - v(empty prompt)| / |v(prompt)| on a fixed batch of evaluation prompts."""
    g = torch.Generator().manual_seed(123)
    device = next(model.parameters()).device
    metas = scenes.evaluation_prompts()
    ids, mask = (v.to(device) for v in words.tokenize([metas[i]["prompt"] for i in range(0, len(metas), 4)]))
    b = len(ids)
    x = torch.randn(b, 3, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, generator=g).to(device)
    t = torch.rand(b, generator=g).to(device)
    null_ids, null_mask = (v.to(device).expand(b, -1) for v in words.tokenize([""]))
    v_c = model(x, t, ids, mask)
    v_u = model(x, t, null_ids, null_mask)
    return float((v_c - v_u).norm() / v_c.norm().clamp_min(1e-8))


@torch.no_grad()
def _cond_gap(model: SparseDiT) -> float:
    """|v(c) - v(null)| / |v(c)| on a fixed batch: how much the model listens to the class (should be >> 0.1)."""
    g = torch.Generator().manual_seed(123)
    device = next(model.parameters()).device
    x = torch.randn(32, 3, 32, 32, generator=g).to(device)
    t = torch.rand(32, generator=g).to(device)
    y = torch.randint(model.config.num_classes, (32,), generator=g).to(device)
    v_c = model(x, t, y)
    v_u = model(x, t, torch.full_like(y, model.config.num_classes))
    return float((v_c - v_u).norm() / v_c.norm().clamp_min(1e-8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["features", "routing", "masking", "t2i", "detector"], action="append")
    parser.add_argument("--steps", type=int, default=4000, help="diffusion training steps per model")
    parser.add_argument("--feature-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--early-step", type=int, default=None, help="t2i: the step of the early checkpoint "
                                                                      "(default steps // 16)")
    parser.add_argument("--init", type=Path, help="t2i: continue from the EMA weights in this folder (a second "
                                                   "stage; its record keeps the first stage's as init_from)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pool", type=int, default=None, help="training images drawn once and reused "
                                                                 "(default 60000 for features, 100000 otherwise)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "testbed_record.json"
    for part in args.only or ["features", "routing", "masking", "detector", "t2i"]:
        if part == "features":
            result = train_features(args.out, args.feature_steps, args.batch, args.seed, device, args.pool or 60_000)
        elif part == "detector":
            result = train_detector(args.out, args.feature_steps, 256, args.seed, device, args.pool or 20_000)
        elif part == "t2i":
            result = train_t2i(args.out, args.steps, args.batch, args.seed, args.lr, device, args.pool or 30_000,
                               args.early_step, args.init)
            if args.init is not None:
                first = args.init / "testbed_record.json"
                result["init_from"] = json.loads(first.read_text()).get("t2i") if first.exists() else str(args.init)
        else:
            result = train_diffusion(part, args.out, args.steps, args.batch, args.seed, args.lr, device,
                                     args.pool or 100_000)
        arch = {"features": "ShapeNet", "t2i": T2I_ARCH, "detector": "ShapeClassifier"}.get(part, ARCH)
        entry = {**result, "arch": arch, "seed": args.seed,
                        "command": " ".join(["python -m harness.testbed.train", *(sys.argv[1:] if argv is None
                                                                                    else argv)]),
                        "torch": torch.__version__, "device": _device_name(device),
                        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                        "git": _git_head(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        if part == "t2i":
            entry["config"] = {**ARCHS[T2I_ARCH], "sparsity": "routing", "route": list(ROUTE),
                               "train_gamma": TRAIN_GAMMA, "prompt_dropout": PROMPT_DROPOUT,
                               "text_encoder": {"vocab": len(words.VOCAB), "width": words.WIDTH, "depth": 2}}
        elif part not in ("features", "detector"):
            entry["config"] = {**ARCHS[ARCH], "sparsity": part, "route": list(ROUTE) if part == "routing"
                                      else None, "train_gamma": TRAIN_GAMMA, "label_dropout": LABEL_DROPOUT}
        record = json.loads(record_path.read_text()) if record_path.exists() else {}  # parts may run in parallel
        record[part] = entry
        record_path.write_text(json.dumps(record, indent=1) + "\n")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()

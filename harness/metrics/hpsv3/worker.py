"""HPSv3 scoring worker: runs in its own environment (`make hpsv3-env` -> .venv-hpsv3, transformers 4.45.2 as the
hpsv3 package pins it) and talks JSON lines over stdin/stdout. It imports nothing from the harness.

    python worker.py --backend hpsv3 --device cuda [--checkpoint HPSv3.safetensors] [--base Qwen2-VL-7B-Instruct]
    <- {"ready": true, "backend": ..., "device": ..., "dtype": ...}   (or {"error": ...} and exit status 2)
    -> {"images": ["a.png", ...], "prompts": ["...", ...]}
    <- {"scores": [mu, ...]}                                           (or {"error": ...}; the worker keeps going)
    stdin closed -> exit 0

Backend "hpsv3": the official HPSv3RewardInferencer, reward(image_paths=..., prompts=...) called with keywords (the
positional order changed between hpsv3 releases), score = mu = logits[:, 0], under torch.no_grad as the official
evaluate/benchmark.py does; bf16 as its HPSv3_7B.yaml sets. It needs a GPU unless --force-cpu. Backend "tiny": a
random-weight tiny Qwen2-VL with the same reward read-out (embed tokens, scatter the image embeddings, sequential
positions, an MLP head on the <|Reward|> token's hidden state, mu = output 0), for tests and dry runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback

# Run as a script, this file's folder is sys.path[0], where the harness's own modules (layout.py, score.py) would
# shadow installed packages of the same name.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


class WorkerError(Exception):
    """A problem the client should see as one message."""


def _hpsv3_backend(args, device):
    """score(image_paths, prompts) -> list of mu, through the official package."""
    try:
        from hpsv3 import HPSv3RewardInferencer
    except ImportError as error:
        raise WorkerError(f"the hpsv3 package is not importable in {sys.executable} ({error}); "
                          "create its environment with `make hpsv3-env`") from error
    config_path = None
    if args.base:  # the base Qwen2-VL from a local folder instead of the hub id in HPSv3_7B.yaml
        import hpsv3

        source = os.path.join(os.path.dirname(hpsv3.__file__), "config", "HPSv3_7B.yaml")
        with open(source) as file:
            lines = [f'model_name_or_path: "{args.base}"\n' if line.startswith("model_name_or_path:") else line
                     for line in file]
        handle, config_path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(handle, "w") as file:
            file.writelines(lines)
    import torch

    inferencer = HPSv3RewardInferencer(config_path=config_path, checkpoint_path=args.checkpoint, device=device)
    if device == "cpu":
        cast_head_input(inferencer.model)

    def score(image_paths, prompts):
        with torch.no_grad():
            rewards = inferencer.reward(image_paths=image_paths, prompts=prompts)
        return [float(r) for r in rewards[:, 0].float().cpu()]

    return score, str(next(inferencer.model.parameters()).dtype)


def _tiny_backend(args, device):
    """A random-weight tiny Qwen2-VL reward model with HPSv3's read-out (tests, dry runs)."""
    import torch
    from PIL import Image
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLModel

    image_token, start, end, reward_token, vocab = 290, 292, 293, 299, 300
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=None, eos_token_id=None,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=image_token, video_token_id=291, vision_start_token_id=start, vision_end_token_id=end)
    torch.manual_seed(args.seed)
    model = Qwen2VLModel(config).eval().to(device)
    head = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).to(device)
    pixels = 4 * 28 * 28
    processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels)

    def score(image_paths, prompts):
        images = [Image.open(path).convert("RGB") for path in image_paths]
        inputs = processor(images=images, return_tensors="pt")
        rows = []
        for grid, prompt in zip(inputs["image_grid_thw"], prompts):
            text = [3 + b for b in prompt.encode()[:48]]
            rows.append([start] + [image_token] * (int(grid.prod()) // 4) + [end] + text + [reward_token])
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (length - len(r)) for r in rows], device=device)
        mask = (ids != 0).long()
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
            vision = model.visual(inputs["pixel_values"].to(device), grid_thw=inputs["image_grid_thw"].to(device))
            vision = getattr(vision, "pooler_output", vision)
            embeds = embeds.masked_scatter((ids == image_token)[..., None].expand_as(embeds), vision)
            positions = torch.arange(length, device=device)[None].expand(len(rows), -1)
            hidden = model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                          position_ids=positions).last_hidden_state
            logits = head(hidden[ids == reward_token].float())
        return [float(v) for v in logits[:, 0].cpu()]

    return score, "torch.float32"


def cast_head_input(model):
    """Feed the float32 score head (`rm_head`) float32 on any device: upstream casts under torch.autocast("cuda"),
    which leaves CPU tensors bf16 ("mat1 and mat2 must have the same dtype")."""
    import torch

    head_dtype = next(model.rm_head.parameters()).dtype

    def cast(_module, inputs):
        return tuple(x.to(head_dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)

    return model.rm_head.register_forward_pre_hook(cast)


BACKENDS = {"hpsv3": _hpsv3_backend, "tiny": _tiny_backend}


def _device(args) -> str:
    """The device to score on: a GPU; the CPU only when forced (HPSv3 is a 7B model) or for the tiny backend."""
    if args.device != "auto":
        device = args.device
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and args.backend == "hpsv3" and not args.force_cpu:
        raise WorkerError("HPSv3 (a 7B Qwen2-VL in bf16) needs a GPU and none is available here; score on a machine "
                          "with one (the worker's own --force-cpu scores on the CPU: hours per thousand images)")
    return device


def serve(args, stdin, stdout) -> int:
    """Load the backend, say ready, answer one request per line until stdin closes."""
    def send(message):
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    try:
        device = _device(args)
        score, dtype = BACKENDS[args.backend](args, device)
    except WorkerError as error:
        send({"error": str(error)})
        return 2
    except Exception as error:  # noqa: BLE001 - any start-up failure reaches the client as its message
        traceback.print_exc(file=sys.stderr)
        send({"error": f"{type(error).__name__}: {error}"})
        return 2
    send({"ready": True, "backend": args.backend, "device": device, "dtype": dtype})
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            images, prompts = request["images"], request["prompts"]
            if len(images) != len(prompts):
                raise WorkerError(f"{len(images)} images but {len(prompts)} prompts")
            missing = [path for path in images if not os.path.isfile(path)]
            if missing:
                raise WorkerError(f"image file not found: {missing[0]}")
            send({"scores": score(images, prompts)})
        except (WorkerError, json.JSONDecodeError, KeyError, TypeError) as error:
            send({"error": f"{type(error).__name__}: {error}"})
        except Exception as error:  # noqa: BLE001 - report it and keep serving; the client decides
            traceback.print_exc(file=sys.stderr)
            send({"error": f"{type(error).__name__}: {error}"})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="hpsv3")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force-cpu", action="store_true")
    parser.add_argument("--checkpoint", default=None, help="HPSv3.safetensors (default: the hub cache)")
    parser.add_argument("--base", default=None, help="local Qwen2-VL-7B-Instruct folder (default: the hub id)")
    parser.add_argument("--seed", type=int, default=0, help="tiny backend: the random weights' seed")
    args = parser.parse_args(argv)
    protocol = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not reach the protocol stream
    try:
        return serve(args, sys.stdin, protocol)
    finally:
        sys.stdout = protocol


if __name__ == "__main__":
    sys.exit(main())

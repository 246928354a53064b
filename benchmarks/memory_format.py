"""The project's two networks with their weights in PyTorch's default layout (NCHW) against
channels-last (NHWC, what `anime_face_id.device.place` gives them), measured in the same
run, interleaved round by round so that the machine's drift falls on both alike.

    .venv/bin/python benchmarks/memory_format.py [--rounds 5] [--device cpu]

At the repository's recipe (params.yaml), untrained weights (they cost the same time):
- embedder, training step: one P x K batch (train.p x train.k images at train.image_size)
  forward, backward and an SGD step, identity head left out;
- embedder, embedding: one forward pass of package.batch_size images, as evaluate, package
  and `gallery rebuild` make them (flip test included when the recipe has it);
- detector, one picture: the CenterNet forward pass of one picture at crop.input_size on
  one thread, as the crop stage runs it (one picture per thread);
- detector, training step: a batch of 8 pictures at 512 px forward and backward.

Prints each one's median seconds in both layouts and the speed-up (NCHW / channels-last),
with the spread over the rounds; the outputs of both layouts are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.config import load_params  # noqa: E402
from anime_face_id.crop import _one_thread_per_image  # noqa: E402
from anime_face_id.device import place, resolve_device  # noqa: E402
from anime_face_id.faces.centernet import FaceCenterNet  # noqa: E402
from anime_face_id.model import build_embedder  # noqa: E402

Case = Callable[[torch.nn.Module], object]


def embedder_training_step(images: torch.Tensor) -> Case:
    def step(model: torch.nn.Module) -> object:
        model.train()
        model.zero_grad(set_to_none=True)
        loss = model(images).square().sum()
        loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter -= 1e-6 * parameter.grad
        return loss

    return step


def inference(images: torch.Tensor) -> Case:
    @torch.inference_mode()
    def forward(model: torch.nn.Module) -> object:
        model.eval()
        return model(images)

    return forward


def detector_training_step(images: torch.Tensor) -> Case:
    def step(model: torch.nn.Module) -> object:
        model.train()
        model.zero_grad(set_to_none=True)
        loss = sum(output.square().mean() for output in model(images))
        loss.backward()
        return loss

    return step


def one_thread(case: Case) -> Case:
    """As the crop stage runs the detector: one torch thread per picture."""

    def run(model: torch.nn.Module) -> object:
        with _one_thread_per_image():
            return case(model)

    return run


def seconds(case: Case, model: torch.nn.Module, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    case(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def agree(case: Case, nchw: torch.nn.Module, channels_last: torch.nn.Module) -> float:
    """The largest difference between the two layouts' inference outputs."""

    @torch.inference_mode()
    def outputs(model: torch.nn.Module) -> list[torch.Tensor]:
        model.eval()
        out = case(model)
        return list(out) if isinstance(out, (tuple, list)) else [out]

    return max(
        float((a - b).abs().max())
        for a, b in zip(outputs(nchw), outputs(channels_last), strict=True)
    )


def compare(name: str, build: Callable[[], torch.nn.Module], case: Case, rounds: int, device):
    nchw = build().to(device)
    channels_last = build()
    channels_last.load_state_dict(nchw.state_dict())
    place(channels_last, device)
    times: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for model in (nchw, channels_last):  # warm-up: allocator, kernels chosen
        seconds(case, model, device)
    for _ in range(rounds):
        times["nchw"].append(seconds(case, nchw, device))
        times["channels_last"].append(seconds(case, channels_last, device))
    ratios = [a / b for a, b in zip(times["nchw"], times["channels_last"], strict=True)]
    a, b = statistics.median(times["nchw"]), statistics.median(times["channels_last"])
    print(
        f"{name:34s} {a:7.3f} s  {b:7.3f} s  x{statistics.median(ratios):5.2f} "
        f"(x{min(ratios):.2f}-x{max(ratios):.2f})"
    )
    return nchw, channels_last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    args = parser.parse_args()
    torch.manual_seed(0)
    params = load_params(REPO / "params.yaml")
    device = resolve_device(args.device)
    train, side = params.train, params.train.image_size
    batch = torch.rand(train.p * train.k, 3, side, side, device=device)
    gallery = torch.rand(params.package.batch_size, 3, side, side, device=device)
    picture = torch.rand(1, 3, params.crop.input_size, params.crop.input_size, device=device)
    detector_batch = torch.rand(8, 3, 512, 512, device=device)

    def embedder() -> torch.nn.Module:
        return build_embedder(train, pretrained=False)

    print(
        f"{device.type}, {torch.get_num_threads()} threads; median of {args.rounds} rounds "
        "(spread of the per-round ratio)"
    )
    print(f"{'':34s} {'NCHW':>9s}  {'chan-last':>9s}  speed-up")
    compare(f"embedder, training step ({len(batch)})", embedder, embedder_training_step(batch),
            args.rounds, device)  # fmt: skip
    models = compare(f"embedder, embedding ({len(gallery)})", embedder, inference(gallery),
                     args.rounds, device)  # fmt: skip
    print(f"{'':34s} outputs agree to {agree(inference(gallery), *models):.1e}")
    detect = one_thread(inference(picture)) if device.type == "cpu" else inference(picture)
    models = compare(f"detector, one picture ({picture.shape[-1]} px)", FaceCenterNet, detect,
                     args.rounds, device)  # fmt: skip
    print(f"{'':34s} outputs agree to {agree(detect, *models):.1e}")
    compare("detector, training step (8)", FaceCenterNet, detector_training_step(detector_batch),
            args.rounds, device)  # fmt: skip


if __name__ == "__main__":
    main()

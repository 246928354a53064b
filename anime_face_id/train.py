"""The train stage: one readable loop, top to bottom (``train`` below).

Embedding network (pretrained backbone + projection + L2 norm) trained with a triplet loss
(plus, when ``train.id_loss_weight`` > 0, a label-smoothed identity loss through a
training-only classifier: identity_loss.py) on P x K batches (P characters, K images
each) drawn from the balanced training index,
validated after every epoch by retrieval within the validation split. The weights of the
epoch with the best validation MAP@R are kept.

Outputs (paths relative to the project root, every write atomic):
  models/embedder.pt          weights + resolved config + class names (checkpoint.py)
  metrics/train.json          best and final numbers (DVC metrics)
  plots/train_history.csv     one row per epoch (DVC plots; evaluate draws it)

Orchestrators observe progress through ``on_epoch`` / ``on_step`` callbacks; this module
knows nothing of MLflow or Prefect.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from anime_face_id import distributed
from anime_face_id.batch_outliers import kept_faces
from anime_face_id.checkpoint import save_checkpoint
from anime_face_id.config import TrainConfig
from anime_face_id.dataset import (
    NumberedBatches,
)
from anime_face_id.device import place, resolve_device
from anime_face_id.errors import StageError
from anime_face_id.fileio import sweep_temporaries
from anime_face_id.identity_loss import identity_loss, make_classifier
from anime_face_id.layout import EMBEDDER
from anime_face_id.losses import make_loss, pairwise_distances
from anime_face_id.model import PretrainedWeightsMissing, build_embedder
from anime_face_id.optimisation import lr_factor, make_optimizer
from anime_face_id.sampler import PKSampler
from anime_face_id.training_data import (
    NumberedPictures,
    load_training_data,
    seed_worker,
    validate,
)
from anime_face_id.training_report import (
    EpochReport,
    TrainResult,
    epoch_line,
    format_duration,
    write_outputs,
)
from anime_face_id.weight_average import WeightAverage

logger = logging.getLogger("anime_face_id.train")


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # reproducible convolutions at some cost in speed
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


class TrainingNet(torch.nn.Module):
    """What one optimiser step runs forward: the embedder's training outputs and, with an
    identity loss, the classifier's logits. One module, so that DistributedDataParallel
    can average the gradients of both."""

    def __init__(self, model: torch.nn.Module, classifier: torch.nn.Module | None):
        super().__init__()
        self.model = model
        self.classifier = classifier

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        embeddings, neck_features = self.model.training_outputs(images)
        logits = None if self.classifier is None else self.classifier(neck_features, labels)
        return embeddings, logits


def parallel(net: TrainingNet, ranks: distributed.Ranks, device: torch.device) -> torch.nn.Module:
    """The net as this process trains it: itself, or wrapped to share gradients."""
    if not ranks.distributed:
        return net
    return DistributedDataParallel(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        # without an identity loss the BNNeck takes no part in the training loss
        find_unused_parameters=net.classifier is None,
    )


def is_better(score: float, best: float | None) -> bool:
    """Higher MAP@R wins; with no validation signal (NaN) the later epoch wins."""
    if best is None:
        return True
    if math.isnan(score):
        return math.isnan(best)
    return math.isnan(best) or score > best


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


# --------------------------------------------------------------------------- the loop


def train(
    root: Path,
    config: TrainConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train, keep the best epoch by validation MAP@R, write the stage outputs.

    ``on_epoch(report)`` after every epoch; ``on_step(step, total_steps, loss)`` after
    every optimiser step (steps count from 1 over the whole run)."""
    root = Path(root)
    started = time.perf_counter()
    ranks = distributed.ranks_from_env()
    device = distributed.process_device(resolve_device(config.device), ranks)
    distributed.start(ranks, device)
    seed_everything(config.seed, device)  # the same initial weights in every process

    if ranks.is_main:
        sweep_temporaries(root / EMBEDDER.parent)  # left by a run killed while saving
    data = load_training_data(root, config)
    try:
        model = place(build_embedder(config), device)
    except PretrainedWeightsMissing as error:
        raise StageError(str(error)) from None
    loss_fn = make_loss(config)
    classifier = None
    if config.id_loss_weight > 0:
        classifier = make_classifier(config, model.embedding_dim, len(data.class_names))
        classifier = classifier.to(device)

    try:
        sampler = PKSampler(
            # by name: the sampler's warnings name the classes it leaves out
            [data.class_names[example.label] for example in data.train.examples],
            p=config.p,
            k=config.k,
            seed=config.seed,
            batches_per_epoch=config.batches_per_epoch,
            image_ids=data.image_ids,
        )
    except ValueError as error:
        raise StageError(
            f"cannot build P x K batches: {error}. A character is trained on from 2 distinct "
            "training crops: collect more pictures, or lower split.val / split.test (the "
            "split's warnings name the characters left with fewer)"
        ) from None
    batches = NumberedBatches(sampler)
    if ranks.distributed:
        if len(batches) < ranks.world:
            raise StageError(
                f"{len(batches)} P x K batches per epoch cannot be shared by {ranks.world} "
                "processes: raise train.batches_per_epoch or start fewer processes"
            )
        batches = distributed.ShardedBatches(batches, ranks)
    loader = DataLoader(
        NumberedPictures(data.train),
        batch_sampler=batches,
        num_workers=config.workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )

    net = parallel(TrainingNet(model, classifier), ranks, device)
    # the network validated and kept: the weights themselves, or their running average
    # (only the first process validates and saves, so only it keeps an average)
    averaging = config.weight_average and ranks.is_main
    average = WeightAverage(model, config.weight_average) if averaging else None
    kept = average.model if average else model
    optimizer = make_optimizer(model, config, classifier)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, config.lr_schedule)
    )

    # one process validates and reports; the others would only repeat it
    untrained_val = validate(model, data, root, config, device) if ranks.is_main else {}
    distributed.wait_for_all(ranks)
    if ranks.is_main:
        logger.info(
            "training on %s: %d characters, %d rows (%d images), %d val images, "
            "%d batches of %d x %d per epoch; untrained val P@1 %.2f MAP@R %.2f",
            device if not ranks.distributed else f"{ranks.world} processes ({device.type})",
            len(data.class_names),
            len(data.train),
            len(set(data.image_ids)),
            len(data.val_paths),
            steps_per_epoch,
            sampler.p,
            sampler.k,
            untrained_val["precision_at_1"],
            untrained_val["map_at_r"],
        )

    history: list[EpochReport] = []
    best_score: float | None = None
    best_epoch = 0
    step = 0

    def run_summary() -> dict:
        return {
            "epochs": config.epochs,
            "epochs_done": len(history),  # fewer than epochs: the run was interrupted
            "device": str(device),
            "untrained_val": untrained_val,
            "num_characters": len(data.class_names),
            "num_train_rows": len(data.train),
            "num_train_images": len(set(data.image_ids)),
            "num_val_images": len(data.val_paths),
            "seconds": time.perf_counter() - started,
            "skipped_images": [
                {"path": path, "reason": reason} for path, reason in data.skipped_images.items()
            ],
        }

    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        batches.set_epoch(epoch)
        net.train()
        losses, id_losses, actives, positives, negatives, left_out = [], [], [], [], [], []
        images_seen, lr = 0, optimizer.param_groups[0]["lr"]
        for images, labels, pictures in loader:
            images, labels = images.to(device), labels.to(device)
            embeddings, logits = net(images, labels)
            if config.batch_outliers:
                distances = pairwise_distances(embeddings.detach())
                keep = kept_faces(
                    distances, labels, config.batch_outliers, pictures, config.batch_outliers_rule
                )
                left_out.append(1 - keep.float().mean().item())  # on the CPU: no sync
                keep = keep.to(device)
                embeddings, labels = embeddings[keep], labels[keep]
                logits = None if logits is None else logits[keep]
            stats = loss_fn(embeddings, labels)
            total = stats.loss
            if logits is not None:
                id_loss = identity_loss(logits, labels, config.label_smoothing)
                total = total + config.id_loss_weight * id_loss
                id_losses.append(id_loss.item())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step is taken with
            optimizer.step()
            scheduler.step()
            if average:
                average.update(model)
            step += 1
            loss = total.item()
            if not math.isfinite(loss):
                raise StageError(
                    f"training diverged at epoch {epoch}, step {step} (loss {loss}): "
                    f"lower train.lr (now {config.lr})"
                )
            if stats.num_valid:  # a batch without any valid anchor says nothing
                losses.append(loss)
                actives.append(stats.active_fraction)
                positives.append(stats.mean_positive_distance)
                negatives.append(stats.mean_negative_distance)
            images_seen += len(images) * ranks.world
            if on_step and ranks.is_main:
                on_step(step, total_steps, loss)
        train_seconds = time.perf_counter() - epoch_started

        if not ranks.is_main:
            distributed.wait_for_all(ranks)  # while the first process validates and saves
            continue
        val = validate(kept, data, root, config, device)
        seconds = time.perf_counter() - epoch_started
        report = EpochReport(
            epoch=epoch,
            epochs=config.epochs,
            loss=_mean(losses),
            identity_loss=_mean(id_losses),
            active_fraction=_mean(actives),
            left_out_fraction=_mean(left_out) if left_out else 0.0,
            mean_positive_distance=_mean(positives),
            mean_negative_distance=_mean(negatives),
            val_precision_at_1=val["precision_at_1"],
            val_map_at_r=val["map_at_r"],
            images_per_s=images_seen / max(train_seconds, 1e-9),
            seconds=seconds,
            eta_s=(time.perf_counter() - started) / epoch * (config.epochs - epoch),
            lr=lr,
        )
        history.append(report)
        logger.info(epoch_line(report))

        if is_better(report.val_map_at_r, best_score):
            best_score, best_epoch = report.val_map_at_r, epoch
            # saved at once, so an interrupted run still leaves its best model so far
            save_checkpoint(root / EMBEDDER, kept, config, data.class_names, epoch, val)
        # ... and the history and metrics that describe it, up to this epoch
        write_outputs(root, history, best_epoch, run_summary())
        if on_epoch:
            on_epoch(report)
        distributed.wait_for_all(ranks)

    if not ranks.is_main:
        distributed.stop()
        return TrainResult(root / EMBEDDER, [], 0, data.class_names, str(device))
    distributed.stop()
    best = history[best_epoch - 1]
    logger.info(
        "best epoch %d: val P@1 %.3f MAP@R %.3f (untrained %.3f / %.3f) in %s",
        best_epoch,
        best.val_precision_at_1,
        best.val_map_at_r,
        untrained_val["precision_at_1"],
        untrained_val["map_at_r"],
        format_duration(time.perf_counter() - started),
    )
    return TrainResult(
        checkpoint=root / EMBEDDER,
        history=history,
        best_epoch=best_epoch,
        class_names=data.class_names,
        device=str(device),
        untrained_val=untrained_val,
        skipped_images=data.skipped_images,
        warnings=list(sampler.warnings),
    )

"""Typed configuration: one pydantic model per params.yaml section.

Unknown keys are rejected at load with a message naming the key, so a typo in
params.yaml fails before any work starts instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anime_face_id.errors import utf8_problem
from anime_face_id.slugs import assign_slugs


class Section(BaseModel):
    # inf and NaN pass every `gt=`/`ge=` bound, then break sleeps, timers and training
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


DAY_S = 24 * 3600  # no wait is longer: inf or 1e300 seconds overflow the platform's timers


class Character(Section):
    name: str = Field(min_length=1)
    query: str | None = None
    # booru backend: the board's character tag (default: the name in tag form,
    # "Kuroko Tetsuya" -> kuroko_tetsuya); a tag is one word, no spaces
    tag: str | None = Field(None, min_length=1, pattern=r"^\S+$")

    @property
    def search_query(self) -> str:
        return self.query or self.name

    @property
    def booru_tag(self) -> str:
        return self.tag or "_".join(self.name.lower().split())


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)  # exactly as netguard.AddressPolicy reads it
    except ValueError:
        return False
    return True


class CollectConfig(Section):
    backend: Literal["google", "duckduckgo", "booru", "folder", "urls"] = "google"
    limit: int = Field(50, ge=1)
    folder: str | None = None
    urls: str | None = None
    # google backend: None searches Google itself; a template with {query} points the
    # library at another results page (a mirror, or a local page in tests).
    search_url: str | None = None
    chromedriver: str | None = None
    search_timeout_s: float = Field(240.0, gt=0, le=DAY_S)
    # ask a search engine for limit x search_factor URLs: the extra ones make up for
    # downloads that fail, and no more than `limit` images are kept either way
    search_factor: float = Field(1.5, ge=1.0, le=10.0)
    # booru backend: a Danbooru-compatible board (its /posts.json API). Safebooru shows
    # only general-rated posts; Danbooru lets anonymous users search 2 tags at once (the
    # character's and one of booru_tags), so more filters there need an account.
    booru_url: str = "https://safebooru.donmai.us"
    booru_tags: list[str] = Field(default_factory=lambda: ["solo"])
    # posts rated otherwise are skipped (g general, s sensitive, q questionable, e explicit)
    booru_ratings: list[Literal["g", "s", "q", "e"]] = Field(default_factory=lambda: ["g"])
    booru_file: Literal["large", "original"] = "large"  # large: the board's <= 850 px sample
    booru_page_size: int = Field(100, ge=1, le=200)  # posts per API request (Danbooru: <= 200)
    booru_max_pages: int = Field(10, ge=1, le=1000)  # per character
    booru_requests_per_s: float = Field(2.0, gt=0, le=10)  # API requests, not image downloads
    # downloader
    workers: int = Field(8, ge=1, le=64)
    timeout_s: float = Field(15.0, gt=0, le=DAY_S)
    # one URL in all (connect, headers, redirects, retries and their backoff, body) takes at
    # most this long, however slowly the server trickles bytes: timeout_s alone only
    # bounds the gap between two reads
    deadline_s: float = Field(120.0, gt=0, le=DAY_S)
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0, le=DAY_S)
    max_bytes: int = Field(20_000_000, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1024)
    # memory one decode may take (16-bit and alpha pictures take more per pixel)
    max_decode_mb: int = Field(512, ge=16)
    max_redirects: int = Field(5, ge=0, le=20)
    # private, loopback and link-local addresses are refused unless listed here (CIDRs)
    allow_networks: list[str] = Field(default_factory=list)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        # Checked here so that a typo stops `check` and the stage before any download,
        # instead of failing in the downloader. Kept as written: the entries are part of
        # the collect stage's "already collected" fingerprint.
        bad = [entry for entry in value if not _is_network(entry)]
        if bad:
            names = ", ".join(repr(entry) for entry in bad)
            raise ValueError(
                f"{names} {'is not an IP network' if len(bad) == 1 else 'are not IP networks'}"
                ": write an address or a CIDR prefix such as 127.0.0.0/8 or ::1/128"
            )
        return value

    @model_validator(mode="after")
    def _backend_inputs(self) -> CollectConfig:
        if self.backend == "folder" and not self.folder:
            raise ValueError("collect.backend is 'folder' but collect.folder is not set")
        if self.backend == "urls" and not self.urls:
            raise ValueError("collect.backend is 'urls' but collect.urls is not set")
        if not self.booru_url.lower().startswith(("http://", "https://")):
            raise ValueError("collect.booru_url must start with http:// or https://")
        if any(not tag or tag != tag.strip() or " " in tag for tag in self.booru_tags):
            raise ValueError("collect.booru_tags: one tag per entry, no spaces")
        if self.search_url is not None and "{query}" not in self.search_url:
            raise ValueError("collect.search_url must contain '{query}'")
        return self


class CropConfig(Section):
    detector: Literal["centernet", "lbp", "none"] = "centernet"
    # centernet: null = the weights shipped in the package
    detector_weights: str | None = None
    input_size: int = Field(512, ge=64, le=2048, multiple_of=32)
    min_score: float = Field(0.3, gt=0.0, lt=1.0)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    # lbp: nagadomi's cascade and the author's parameters
    cascade: str | None = None
    scale_factor: float = Field(1.1, gt=1.0)
    min_neighbors: int = Field(5, ge=0)
    min_size: int = Field(24, ge=1)
    margin: float = Field(0.4, ge=0.0, le=2.0)
    size: int = Field(256, ge=16, le=2048)
    workers: int = Field(0, ge=0)  # 0: one per CPU core
    # raw images larger than this are recorded as decompression bombs instead of decoded
    max_pixels: int = Field(40_000_000, ge=1024)
    # memory one decode may take (16-bit and alpha pictures take more per pixel)
    max_decode_mb: int = Field(512, ge=16)


class ReviewAppConfig(Section):
    """The review app (``make review``); the stage ignores these."""

    url: str = "http://127.0.0.1:8501"  # where it runs: the sign-off form links it
    page_size: int = Field(48, ge=1, le=500)  # crops per page
    # How close (bits of 64) the perceptual hashes of two characters' crops must be to flag
    # both as one picture.
    duplicate_distance: int = Field(4, ge=0, le=64)


class SignoffConfig(Section):
    """The pipeline flow's pause for a reviewer's sign-off (flows/pipeline.py)."""

    timeout_s: int = Field(7 * DAY_S, ge=1, le=366 * DAY_S)  # how long it waits in the Prefect UI


class ReviewConfig(Section):
    require_complete: bool = True  # the stage's one setting
    app: ReviewAppConfig = ReviewAppConfig()
    signoff: SignoffConfig = SignoffConfig()


class SplitConfig(Section):
    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.15, ge=0.0, lt=1.0)
    holdout_characters: int = Field(0, ge=0)
    seed: int = 0
    # crops whose perceptual hashes differ in at most this many of 64 bits are one cluster
    phash_distance: int = Field(6, ge=0, le=64)
    min_per_character: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError("split.val + split.test must leave something for training")
        return self


class BalanceConfig(Section):
    # A bound that stops a typo (3200000) from writing millions of rows per character.
    min_per_class: int = Field(32, ge=1, le=100_000)
    method: Literal["oversample", "augment"] = "oversample"
    seed: int = 0


# choices named once: TrainConfig and TrainParams (and the embedder's own checks) share them
Neck = Literal["none", "batchnorm"]
AppendedFeatures = Literal["none", "trained", "imagenet"]


class TrainConfig(Section):
    # ImageNet-pretrained EfficientNet-Lite: lite1 and lite2 are deeper (and lite2 wider),
    # ~1.5x and ~2x lite0's CPU time at the same image size
    backbone: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = (
        "efficientnet_lite0"
    )
    pretrained: bool = True
    # 1: the backbone's last downsampling step is skipped, so the pooled features come from a
    # map of twice the resolution (10 x 10 at 160 px), Luo et al. 2019's "last stride = 1";
    # 1.2x the CPU time of a training step, 1.55x per epoch with flip-test validation
    last_stride: Literal[1, 2] = 2
    # how the backbone's last map becomes one vector: its average, or its generalised mean
    # (GeM, Radenović et al. 2018: p learned from 3), which weighs strong local features more
    pooling: Literal["average", "gem"] = "average"
    image_size: int = Field(160, ge=32, le=1024)
    embedding_dim: int = Field(128, ge=2)
    # dropout on the pooled backbone features, before the embedding projection: 0.2 keeps
    # more of what generalises to characters never trained on (benchmarks/quality.py)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    # batchnorm: BNNeck (Luo et al. 2019), a BatchNorm after the projection whose output is
    # the embedding and feeds the identity loss; none: the projection is the embedding
    neck: Neck = "none"
    # weight of the label-smoothed identity (cross-entropy) loss added to the triplet
    # loss, through a training-only classifier over the training characters; 0 = off
    id_loss_weight: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)  # of the identity loss
    # the identity loss's classifier: linear (Luo et al. 2019) or cosine, logits
    # id_scale x cos(feature, class) with id_margin taken off the true class (CosFace);
    # the margin is in the logged identity loss, so cosine runs log larger values
    id_head: Literal["linear", "cosine"] = "linear"
    id_scale: float = Field(30.0, gt=0.0)
    id_margin: float = Field(0.35, ge=0.0, lt=1.0)
    # embed each image and its mirror image, averaged (every stage and the served model)
    flip_test: bool = False
    # what follows the embedding in every vector the network gives (evaluate, gallery,
    # identify, the served model; training's losses never see it): the unit-length pooled
    # features of the trained backbone ("trained") or of a frozen copy of the untrained
    # ImageNet backbone ("imagenet", a second backbone pass), times append_weight, then
    # the whole vector normalised again. The projection to embedding_dim keeps what tells
    # the training characters apart; the pooled features keep more of what tells unseen
    # characters apart. none: the embedding alone
    append_features: AppendedFeatures = "none"
    append_weight: float = Field(1.0, gt=0.0, le=10.0)
    p: int = Field(8, ge=2)
    k: int = Field(4, ge=2)
    # P x K batches per epoch; None: enough to see every usable image about once and
    # every character at least once
    batches_per_epoch: int | None = Field(None, ge=1)
    loss: Literal["batch_hard", "batch_all"] = "batch_hard"
    # per character in each P x K batch, leave this many faces out of the losses: those
    # farthest from their batch-mates, as faces filed under the wrong character are
    # (batch_outliers.py); a character keeps at least 2; 0 = train on every face
    batch_outliers: int = Field(0, ge=0)
    # farthest: leave out the farthest faces in every batch; misfiled: only those of them
    # also nearer another character's faces in the batch than their own (clean data keeps
    # nearly every face)
    batch_outliers_rule: Literal["farthest", "misfiled"] = "farthest"
    margin: Literal["soft"] | float = "soft"
    lr: float = Field(3.0e-4, gt=0)
    # the pretrained backbone learns at lr x this, the new projection head at lr: below 1
    # the backbone keeps more of its ImageNet features (characters never trained on)
    backbone_lr_factor: float = Field(1.0, gt=0.0, le=10.0)
    # Adam's L2 penalty (decoupled, as AdamW); 0 = plain Adam as in the original
    weight_decay: float = Field(0.0, ge=0.0)
    # cosine: decay the learning rate to 0 over the run (after warm-up); constant: keep lr
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    # linear warm-up from lr/10 over this many epochs: protects the pretrained features
    # from the large early gradients of a random projection head
    warmup_epochs: float = Field(0.0, ge=0.0)
    # face-suited augmentation (flip, tilt, zoom, colour, greyscale) on every training
    # image; rows that balance marked augment=1 are augmented either way
    augment: bool = True
    # probability that an augmented training image has a random rectangle (2-40% of it)
    # blanked out (random erasing, Zhong et al. 2017); 0 = never
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    # probability that an augmented training image is shrunk to 30-90% of its side and
    # enlarged back (thumbnails and small faces look like that); 0 = never
    downscale: float = Field(0.0, ge=0.0, le=1.0)
    # probability that an augmented training image is redrawn in another style: thicker or
    # thinner lines, crisper, or flatter (cel-shaded) tones; 0 = never
    drawing_style: float = Field(0.0, ge=0.0, le=1.0)
    # true: the redrawing works on the grey value and keeps every pixel's hue (hair and eye
    # colours); false: per RGB channel, which also shifts hues (up to ~40 degrees)
    drawing_style_keeps_hue: bool = False
    # > 0: validate and keep an exponential moving average of the weights instead of the
    # weights themselves (weight_average.py); the decay of update n is
    # min(weight_average, (1 + n) / (10 + n)), so over a few hundred steps the ramp, not
    # this value, sets it (0.98 at step 440); 0 = off
    weight_average: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: int = Field(30, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    workers: int = Field(0, ge=0, le=64)  # DataLoader processes; 0 loads in the main process
    eval_batch_size: int = Field(64, ge=1)  # images per forward pass when embedding val
    # training processes on this machine (torch DistributedDataParallel through torchrun:
    # gloo on CPUs, NCCL with one GPU each); each takes its own P x K batch per step
    processes: int = Field(1, ge=1, le=256)

    @field_validator("margin")
    @classmethod
    def _positive_margin(cls, value: str | float) -> str | float:
        if value != "soft" and float(value) <= 0:
            raise ValueError("train.margin must be 'soft' or a positive number")
        return value

    @model_validator(mode="after")
    def _outliers_leave_a_pair(self) -> TrainConfig:
        # a character keeps 2 of its K pictures, so a larger count would silently be K - 2
        if self.batch_outliers > self.k - 2:
            raise ValueError(
                f"train.batch_outliers ({self.batch_outliers}) must be at most k - 2 "
                f"({self.k - 2}): each character keeps 2 of its k = {self.k} faces in a "
                "batch as a positive pair; raise train.k or lower train.batch_outliers"
            )
        return self


class TrainParams(TrainConfig):
    """``train:`` in params.yaml. Its defaults are the recipe the repository's params.yaml
    ships (the README's recipe table), so a params.yaml that leaves them out trains that
    recipe too; TrainConfig's own defaults stay those older checkpoints were saved under,
    so that they load as they were trained."""

    neck: Neck = "batchnorm"
    id_loss_weight: float = Field(1.0, ge=0.0)
    flip_test: bool = True
    append_features: AppendedFeatures = "trained"
    epochs: int = Field(45, ge=1)


class EvaluateConfig(Section):
    k: list[int] = Field(default_factory=lambda: [1, 5, 10])
    # also score the untrained network (pooled ImageNet features) on val: what training bought
    baseline: bool = True
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: int = Field(64, ge=1)
    grid_queries: int = Field(6, ge=0, le=50)  # val queries shown in the retrieval grid
    confused_pairs: int = Field(10, ge=0)  # most-confused character pairs reported
    seed: int = 0  # query choice for the grid and the t-SNE layout

    @field_validator("k")
    @classmethod
    def _positive_ks(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("evaluate.k must list positive integers")
        return sorted(set(value))


class PackageConfig(Section):
    """The package stage (and `anime-face-id gallery rebuild`): the gallery new faces are
    compared with, and the threshold below which a face is unknown."""

    # train: the training split's crops (val calibrates the threshold); curated: every
    # curated crop, so characters added after the last split can be named too
    gallery_source: Literal["train", "curated"] = "train"
    # None: calibrated on the validation split (see anime_face_id.calibration); a number
    # overrides it (cosine similarity; faces scoring below it are reported as unknown)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    # leave_out: gallery faces nearer another character's centre than their own (faces
    # review let through under the wrong name; anime_face_id/misfiled.py) are left out of
    # the gallery and its calibration, and listed in metrics/package.json and
    # plots/gallery_left_out.png; evaluate's identification leaves them out too. keep: every face
    misfiled: Literal["leave_out", "keep"] = "keep"
    batch_size: int = Field(64, ge=1)  # gallery images per forward pass
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @property
    def leaves_out_misfiled(self) -> bool:
        return self.misfiled == "leave_out"


class IdentifyConfig(Section):
    """Naming the faces in new pictures: how the gallery is searched and what is reported."""

    top: int = Field(3, ge=1, le=50)  # candidate characters reported per face
    neighbours: int = Field(5, ge=0, le=50)  # nearest gallery images reported per face
    # exact: one matrix product over the whole gallery; ivf: k-means lists, only the
    # `ivf_probes` nearest lists are scanned; auto: exact up to `exact_max_items` items
    index: Literal["auto", "exact", "ivf"] = "auto"
    exact_max_items: int = Field(50_000, ge=1)
    ivf_lists: int | None = Field(None, ge=1)  # None: about sqrt(gallery items)
    ivf_probes: int = Field(8, ge=1)
    search_depth: int = Field(200, ge=1)  # ivf: gallery items ranked per face
    max_bytes: int = Field(20_000_000, ge=1024)  # bigger pictures are refused unread
    max_pictures: int = Field(256, ge=1)  # per request to the served model
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0  # k-means initialisation of the ivf index


class ComputeConfig(Section):
    """Where collect's and crop's per-character work and the embedding passes (evaluate,
    package, gallery rebuild, the review app's suspicion scores) run; the results are the
    same."""

    # local: this process (threads); dask: a Dask cluster (the stages through Prefect's
    # DaskTaskRunner, the hand-run commands and the review app through their own client)
    runner: Literal["local", "dask"] = "local"
    # dask: a running scheduler (tcp://host:8786); None starts a cluster of `dask_workers`
    # processes on this machine, listening on 127.0.0.1 only, for the stage's duration
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1, le=1024)

    @property
    def local_cluster(self) -> dict:
        """``distributed.LocalCluster`` settings for ``dask`` with no address: worker
        processes on this machine that take no outside connections."""
        return {
            "n_workers": self.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",  # its dashboard too, on a free port
        }


class Params(Section):
    characters: list[Character] = Field(min_length=1)
    collect: CollectConfig = CollectConfig()
    crop: CropConfig = CropConfig()
    review: ReviewConfig = ReviewConfig()
    split: SplitConfig = SplitConfig()
    balance: BalanceConfig = BalanceConfig()
    train: TrainParams = TrainParams()
    evaluate: EvaluateConfig = EvaluateConfig()
    package: PackageConfig = PackageConfig()
    identify: IdentifyConfig = IdentifyConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> Params:
        assign_slugs([c.name for c in self.characters])  # raises on a name listed twice
        return self

    # Here, not on TrainConfig: checkpoints store their TrainConfig, and one trained before
    # this rule must still load.
    @model_validator(mode="after")
    def _warmup_within_the_run(self) -> Params:
        train = self.train
        if train.warmup_epochs and train.warmup_epochs >= train.epochs:
            raise ValueError(
                f"train.warmup_epochs ({train.warmup_epochs:g}) must be less than train.epochs "
                f"({train.epochs}): the whole run would train at the warm-up's low rate"
            )
        return self

    @property
    def slugs(self) -> dict[str, str]:
        return assign_slugs([c.name for c in self.characters])


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where."""


def _known_keys_hint(loc: tuple) -> str:
    """The closest known key of the section the unknown one is in, if any is close."""
    model: object = Params
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list: its element type
            args = typing.get_args(model)
            model = args[0] if args else None
            continue
        fields = getattr(model, "model_fields", {})
        model = fields[part].annotation if part in fields else None
    known = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    where = ".".join(str(part) for part in (*loc[:-1], close[0])) if close else ""
    suggestion = f"did you mean '{where}'? " if close else ""
    return f"{suggestion}every key is described in the comments of the repository's params.yaml"


def describe_validation_error(error: ValidationError) -> str:
    """Every error of a pydantic validation on one line: where, then what (an unknown key
    with the closest known one)."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}' ({_known_keys_hint(item['loc'])})")
        else:
            lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


# Keys that moved to another section: named, so an older params.yaml gets told where.
MOVED = {
    ("identify", "gallery_source"): "package.gallery_source",
    ("identify", "threshold"): "package.threshold",
    ("review", "app_url"): "review.app.url",
    ("review", "page_size"): "review.app.page_size",
    ("review", "duplicate_distance"): "review.app.duplicate_distance",
    ("review", "signoff_timeout_s"): "review.signoff.timeout_s",
}


def _moved_keys(data: dict) -> list[str]:
    return [
        f"{section}.{key} is now {new} (move it there in params.yaml)"
        for (section, key), new in MOVED.items()
        if isinstance(data.get(section), dict) and key in data[section]
    ]


def parse_params(data: object, source: str = "params") -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    moved = _moved_keys(data)
    if moved:
        raise ConfigError(f"{source}: {'; '.join(moved)}")
    try:
        return Params.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's several-line report as one line: where, then what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    what = f"{context}, {problem}" if context else problem
    if mark is None:
        return what
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def read_params_text(path: Path) -> str:
    # Bytes first: a text read would fail with a decoder traceback and a chunk offset.
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    where = utf8_problem(data)
    if where is not None:
        raise ConfigError(f"{path} is not UTF-8 text ({where}); save it as UTF-8")
    return data.decode("utf-8")


def load_params(path: str | Path = "params.yaml") -> Params:
    """The typed params; any problem is one ConfigError whose one-line message names the
    file and, where it has one, the place (byte offset, line) or the key."""
    path = Path(path)
    text = read_params_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(error)}") from None
    return parse_params(data, str(path))

"""Structured configs: the schema every Hydra config group is validated against.

Each dataclass mirrors one config group (``configs/<group>/*.yaml``). Hydra checks key names and
types when it composes; ``validate`` then instantiates the dataclasses, whose ``__post_init__``
checks ranges, so that every bad value fails at start-up with one line naming it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING as MISSING_FACTORY
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from adarem.optim.ranges import describe, in_range

LR_MAX = 1e6  # the highest optimizer.lr a run accepts; compare.py's grid extensions stop below it


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line that says what to do."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _refuse_unread(cfg, section: str, own: tuple, read: set, who: str, choice: str = "") -> None:
    """ConfigError for a key of ``own`` (the settings only some choices read) that this choice does
    not read (``read``), set to other than its default: optimizer=adam optimizer.momentum=0.5
    trained plain Adam in a directory of its own, the setting believed changed."""
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING_FACTORY else f.default
                for f in fields(cfg)}
    for key in own:
        value = getattr(cfg, key)
        shown = list(value) if isinstance(value, (list, tuple)) else value
        if key not in read and shown != defaults[key]:
            raise ConfigError(f"{section}.{key}={shown} is not read by {who} (of its {section}-specific settings it "
                              f"reads {', '.join(sorted(read)) or 'none'}): drop it (from the command line, or the "
                              f"preset that sets it), or choose "
                              f"{choice or ('an optimizer' if section == 'optimizer' else 'a ' + section)} that reads it")


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm model name, or torchvision.<name>
    pretrained: bool = False
    drop_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments

    def __post_init__(self):
        _require(0.0 <= self.drop_rate < 1.0, f"model.drop_rate={self.drop_rate} must be in [0, 1)")


# the settings only some optimizers read (adarem/optim/factory.py: build_optimizer), and which do
OPTIMIZER_SPECIFIC = ("momentum", "nesterov", "betas", "eps", "beta", "decay", "decay_horizon", "decoupled_weight_decay")
OPTIMIZER_READS = {"sgd": {"momentum", "nesterov"}, "adam": {"betas", "eps"}, "adamw": {"betas", "eps"},
                   "adarem": {"momentum", "eps", "beta", "decay", "decay_horizon", "decoupled_weight_decay"}}


def optimizer_reads(name: str, decay_horizon: float) -> set:
    """The settings of OPTIMIZER_SPECIFIC that optimizer ``name`` reads: AdaRem with a decay_horizon
    > 0 takes its lambda from the horizon and reads no decay."""
    reads = set(OPTIMIZER_READS.get(name, set()))
    if name == "adarem" and decay_horizon > 0:
        reads.discard("decay")
    return reads


# the same for the lr schedules (adarem/schedule.py); warmup_lr only with a warm-up
SCHEDULE_SPECIFIC = ("milestones", "decay_rate", "min_lr", "warmup_lr")
SCHEDULE_READS = {"cosine": {"min_lr"}, "step": {"milestones", "decay_rate"}, "constant": set()}


@dataclass
class OptimizerConfig:
    name: str = "adarem"  # sgd | adam | adamw | adarem (variants are presets of these)
    lr: float = 0.1
    weight_decay: float = 0.0
    no_weight_decay_on_bias_and_norm: bool = True
    momentum: float = 0.0  # sgd and adarem
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    eps: float = 1e-8  # adam, adamw, adarem
    beta: float = 0.9  # adarem: decay of the direction tracker
    decay: float = 0.999  # adarem: resilience decay lambda
    # adarem: > 0 sets lambda from the run's length instead of `decay`: lambda^t reaches 0.01 at
    # this fraction of the total steps (epochs x steps per epoch), so that the resilience fades on
    # the same part of training on digits and on ImageNet; the lambda used is in run.json.
    decay_horizon: float = 0.0
    decoupled_weight_decay: bool = False  # adarem
    # Which implementation steps the optimizer: auto (each optimizer's fused path where it has one:
    # torch's fused SGD/Adam/AdamW where this torch build has them for the model's device, AdaRem's
    # compiled one on CUDA and its C++ kernel on the CPU; foreach otherwise) | fused | foreach | loop.
    # The chosen one is recorded (adarem.optim.factory.optimizer_impl). The legacy flags
    # foreach/fused below are passed to the optimizer as given and may be used only with impl=auto.
    impl: str = "auto"
    foreach: Optional[bool] = None
    fused: Optional[bool] = None
    variant: str = ""  # the preset's name (adarem_m, ...); the tables group by it

    def __post_init__(self):
        _require(self.name in ("sgd", "adam", "adamw", "adarem"),
                 f"optimizer.name={self.name!r} is not one of sgd, adam, adamw, adarem")
        _require(self.lr > 0, f"optimizer.lr={self.lr} must be > 0")
        _require(self.lr <= LR_MAX, f"optimizer.lr={self.lr} must be a finite value <= 1e6")  # LR_MAX
        _require(0 <= self.weight_decay < 1e3,
                 f"optimizer.weight_decay={self.weight_decay} must be a finite value in [0, 1000)")
        for key in ("momentum", "beta", "decay"):  # AdaRem's ranges (adarem/optim/ranges.py); SGD's momentum too
            _require(in_range(key, getattr(self, key)), f"optimizer.{key}={getattr(self, key)} must be in {describe(key)}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"optimizer.betas={list(self.betas)} must be two values in [0, 1)")
        _require(0 <= self.decay_horizon <= 100, f"optimizer.decay_horizon={self.decay_horizon} must be in [0, 100] "
                                                 f"(a fraction of the run's steps; 0 = use optimizer.decay)")
        _require(self.decay_horizon == 0 or self.name == "adarem",
                 f"optimizer.decay_horizon={self.decay_horizon} applies to AdaRem only, not {self.name!r}")
        horizon = self.name == "adarem" and self.decay_horizon > 0  # lambda then comes from the horizon
        _refuse_unread(self, "optimizer", OPTIMIZER_SPECIFIC, optimizer_reads(self.name, self.decay_horizon),
                       f"optimizer.name={self.name}" + (f" with optimizer.decay_horizon={self.decay_horizon:g}"
                                                        if horizon else ""))
        _require(not (self.name == "sgd" and self.nesterov and self.momentum == 0),
                 "optimizer.nesterov=true needs optimizer.momentum > 0 (Nesterov's is a momentum method); set a "
                 "momentum or drop nesterov")
        _require(0 <= self.eps < 1, f"optimizer.eps={self.eps} must be a finite value in [0, 1)")
        _require(self.impl in ("auto", "fused", "foreach", "loop"),
                 f"optimizer.impl={self.impl!r} is not one of auto, fused, foreach, loop")
        _require(self.impl == "auto" or (self.foreach is None and self.fused is None),
                 f"optimizer.impl={self.impl} and optimizer.foreach/fused both set; use impl alone")
        _require(not (self.foreach and self.fused),
                 "optimizer.foreach=true and optimizer.fused=true cannot both be set; pick one (or optimizer.impl)")
        if not self.variant:
            self.variant = self.name


@dataclass
class DataConfig:
    name: str = "digits"  # digits | fashion_mnist | imagenet | synthetic | folder
    root: str = ""  # dataset location; "" means the dataset's default
    loader: str = "torch"  # torch | dali
    image_size: int = 32  # train crop / val crop size
    val_resize: int = 0  # shorter side before the val centre crop; 0 = image_size / 0.875
    random_resized_crop: bool = True  # False: resize only (for tiny images such as digits)
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    in_chans: int = 3
    num_workers: int = 2
    # keep every sample's finished uint8 image in memory once made, where the transform draws
    # nothing at random (no random crop, no flip: digits, any val split). A small dataset then
    # skips decoding and resizing after the first epoch; a batch is bit-identical either way.
    cache_samples: bool = False
    on_corrupt: str = "error"  # error: stop naming the file | skip: replace and count
    # "val": evaluate on the dataset's val (or test) split. "holdout": train on part of the training
    # split and evaluate on a fixed holdout_fraction of it - for hyperparameter selection that
    # never looks at the test split (scripts/compare.py selects learning rates this way).
    eval_on: str = "val"
    holdout_fraction: float = 0.1
    # synthetic
    num_classes: int = 1000
    synthetic_train_size: int = 2560
    synthetic_val_size: int = 512
    # dali
    dali_threads: int = 4
    dali_prefetch: int = 2
    dali_hw_decoder_load: float = 0.65
    dali_device_memory_padding: int = 211025920
    dali_host_memory_padding: int = 140544512

    def __post_init__(self):
        _require(self.name in ("digits", "fashion_mnist", "imagenet", "synthetic", "folder"),
                 f"data.name={self.name!r} is not one of digits, fashion_mnist, imagenet, synthetic, folder")
        _require(self.loader in ("torch", "dali"), f"data.loader={self.loader!r} must be torch or dali")
        _require(self.loader == "torch" or self.name in ("digits", "imagenet", "folder"),  # digits: a JPEG tree too
                 f"data.loader=dali reads ImageFolder trees; data.name={self.name} has none, use data.loader=torch")
        _require(self.image_size >= 8, f"data.image_size={self.image_size} must be >= 8")
        _require(self.val_resize == 0 or self.val_resize >= self.image_size,
                 f"data.val_resize={self.val_resize} must be 0 (image_size / 0.875) or >= data.image_size="
                 f"{self.image_size} (the centre crop is taken from it)")
        _require(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be >= 0")
        _require(self.on_corrupt in ("error", "skip"), f"data.on_corrupt={self.on_corrupt!r} must be error or skip")
        _require(self.eval_on in ("val", "holdout"), f"data.eval_on={self.eval_on!r} must be val or holdout")
        _require(0 < self.holdout_fraction < 1, f"data.holdout_fraction={self.holdout_fraction} must be in (0, 1)")
        _require(self.in_chans in (1, 3), f"data.in_chans={self.in_chans} must be 1 or 3")
        _require(self.num_classes >= 2, f"data.num_classes={self.num_classes} must be >= 2 (one class has nothing to learn)")
        for name in ("mean", "std"):
            values = list(getattr(self, name))
            _require(len(values) == self.in_chans and all(math.isfinite(v) for v in values),
                     f"data.{name}={values} must hold {self.in_chans} finite value(s), one per input channel "
                     f"(data.in_chans={self.in_chans})")
        _require(all(v > 0 for v in self.std), f"data.std={list(self.std)} must be > 0 (it divides)")
        # a key this dataset or loader never reads trained the same run in a directory (and a table
        # setting) of its own, believed changed: data.num_classes=5 on the 10 digits (helper-92)
        own = DATA_SPECIFIC
        if self.val_resize in (0, resize_for_crop(self.image_size)):  # its default's meaning (the presets' value)
            own = tuple(k for k in own if k != "val_resize")
        _refuse_unread(self, "data", own, data_reads(self),
                       f"data.name={self.name} with data.loader={self.loader}"
                       + ("" if self.name == "synthetic" or self.random_resized_crop else " and data.random_resized_crop=false"),
                       "a dataset or loader")


# DataConfig's keys that only some datasets or loaders read (data_reads)
DALI_KEYS = ("dali_threads", "dali_prefetch", "dali_hw_decoder_load", "dali_device_memory_padding",
             "dali_host_memory_padding")
DATA_SPECIFIC = ("num_classes", "synthetic_train_size", "synthetic_val_size", "val_resize") + DALI_KEYS


def data_reads(cfg: DataConfig) -> set[str]:
    """Which of DATA_SPECIFIC the data pipeline reads: the generated dataset its class count and
    sizes (a real dataset's classes are its folders'); the val resize only before a centre crop
    (data.random_resized_crop; a plain resize otherwise); the DALI settings only with that loader."""
    if cfg.name == "synthetic":
        return {"num_classes", "synthetic_train_size", "synthetic_val_size"}
    return ({"val_resize"} if cfg.random_resized_crop else set()) | (set(DALI_KEYS) if cfg.loader == "dali" else set())


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0  # lr at the start of the warm-up (<= optimizer.lr), ramps linearly to optimizer.lr
    # step: epochs counted from the start of training (warm-up included), after the warm-up; the first
    # step of epoch m + 1 runs at the decayed lr; one at or beyond trainer.epochs never fires (a
    # truncated recipe, said at start-up)
    milestones: list[int] = field(default_factory=lambda: [30, 60, 80])
    decay_rate: float = 0.1  # step: lr factor at each milestone
    min_lr: float = 0.0  # cosine: the lr the run ends at (<= optimizer.lr); the cosine spans the steps after the warm-up

    def __post_init__(self):
        _require(self.name in ("cosine", "step", "constant"),
                 f"schedule.name={self.name!r} must be cosine, step or constant")
        _require(0 <= self.warmup_epochs < 1e6, f"schedule.warmup_epochs={self.warmup_epochs} must be a finite value >= 0")
        _require(0 < self.decay_rate <= 1, f"schedule.decay_rate={self.decay_rate} must be in (0, 1]")
        _require(0 <= self.warmup_lr < 1e6, f"schedule.warmup_lr={self.warmup_lr} must be a finite value >= 0")
        _require(0 <= self.min_lr < 1e6, f"schedule.min_lr={self.min_lr} must be a finite value >= 0")
        ms = list(self.milestones)
        _require(all(m >= 1 for m in ms) and ms == sorted(set(ms)),
                 f"schedule.milestones={ms} must be increasing epoch numbers >= 1")
        warm = {"warmup_lr"} if self.warmup_epochs > 0 else set()
        _refuse_unread(self, "schedule", SCHEDULE_SPECIFIC, SCHEDULE_READS.get(self.name, set()) | warm,
                       f"schedule.name={self.name}" + ("" if warm else " without a warm-up (schedule.warmup_epochs=0)"))


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128  # global, over all ranks
    amp: str = "auto"  # auto (bf16 on GPU, none on CPU) | bf16 | fp16 | none
    channels_last: bool = False
    compile: bool = False
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    eval_every: int = 1  # epochs
    # Evaluations per epoch, evenly spaced in steps (the last at the epoch's end): the validation
    # curve's resolution, which steps-to-target in the tables is read from. 1 = at epoch ends only.
    evals_per_epoch: int = 1
    # Before each evaluation, recompute BatchNorm statistics on this many training batches (and put
    # the running averages back afterwards); 0 = evaluate with the running averages.
    bn_recalibrate: int = 0
    # BatchNorm normalises over each rank's batch (batch_size / world size) unless this converts it
    # to SyncBatchNorm (CUDA, more than one rank): then over the global batch, at any world size.
    # The images per BatchNorm batch are in run.json (bn_batch), and the tables never pool runs
    # that differ in it.
    sync_bn: bool = False
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 20  # per-iteration loss line every N steps
    checkpoint_every_min: float = 30.0  # wall-clock checkpoints within an epoch; 0 = only at epoch ends
    oscillation_every: int = 0  # log update sign-flip fractions every N steps; 0 = off
    max_steps: int = 0  # stop after this many optimizer steps (tests); 0 = no limit
    stop_check_every: int = 10  # DDP: steps between the collective stop/checkpoint decisions
    diverge_loss: float = 1e4  # a finite loss above this also counts as divergence
    # DDP: a rank whose heartbeat has not moved for this long counts as lost, and the others end
    # (adarem/run/peer_watch.py); NCCL would wait for it until the process group's 30-min timeout.
    # 0 = no watch.
    peer_timeout_s: float = 120.0
    # DDP outside torchrun (srun tasks, ranks set by hand): how long the ranks wait for each other at
    # start-up before each ends with one line (adarem/rendezvous.py); torchrun's agent has its own.
    start_timeout_s: float = 600.0

    def __post_init__(self):
        _require(self.epochs >= 1, f"trainer.epochs={self.epochs} must be >= 1")
        _require(self.batch_size >= 1, f"trainer.batch_size={self.batch_size} must be >= 1")
        _require(self.amp in ("auto", "bf16", "fp16", "none"),
                 f"trainer.amp={self.amp!r} must be auto, bf16, fp16 or none")
        _require(self.grad_clip >= 0, f"trainer.grad_clip={self.grad_clip} must be >= 0")
        _require(self.eval_every >= 1, f"trainer.eval_every={self.eval_every} must be >= 1")
        _require(1 <= self.evals_per_epoch <= 1000,
                 f"trainer.evals_per_epoch={self.evals_per_epoch} must be in [1, 1000] (and at most the steps of an epoch)")
        _require(self.evals_per_epoch == 1 or self.eval_every == 1,
                 f"trainer.evals_per_epoch={self.evals_per_epoch} needs trainer.eval_every=1 "
                 f"(got {self.eval_every}); use one or the other")
        _require(self.bn_recalibrate >= 0,
                 f"trainer.bn_recalibrate={self.bn_recalibrate} must be >= 0 (training batches; 0 = off)")
        _require(self.device in ("auto", "cpu", "cuda"), f"trainer.device={self.device!r} must be auto, cpu or cuda")
        _require(self.log_every >= 1, f"trainer.log_every={self.log_every} must be >= 1")
        _require(self.oscillation_every >= 0, f"trainer.oscillation_every={self.oscillation_every} must be >= 0")
        _require(self.max_steps >= 0, f"trainer.max_steps={self.max_steps} must be >= 0 (0 = no limit)")
        _require(self.stop_check_every >= 1, f"trainer.stop_check_every={self.stop_check_every} must be >= 1")
        _require(self.diverge_loss > 0, f"trainer.diverge_loss={self.diverge_loss} must be > 0 "
                                        f"(a loss above it counts as divergence)")
        _require(self.peer_timeout_s == 0 or self.peer_timeout_s >= 1,
                 f"trainer.peer_timeout_s={self.peer_timeout_s} must be 0 (no watch) or at least 1 (seconds)")
        _require(self.start_timeout_s >= 1,
                 f"trainer.start_timeout_s={self.start_timeout_s} must be at least 1 (seconds the ranks wait for each other)")
        _require(self.checkpoint_every_min >= 0,
                 f"trainer.checkpoint_every_min={self.checkpoint_every_min} must be >= 0 (0 = only at epoch ends)")


@dataclass
class LoggingConfig:
    wandb: str = "offline"  # offline | online | disabled
    project: str = "adarem"
    entity: Optional[str] = None
    group: str = ""  # default: <data>-<model>-<optimizer variant>
    progress: str = "auto"  # auto (bar on a terminal) | bar | lines | none

    def __post_init__(self):
        _require(self.wandb in ("offline", "online", "disabled"),
                 f"logging.wandb={self.wandb!r} must be offline, online or disabled")
        _require(self.progress in ("auto", "bar", "lines", "none"),
                 f"logging.progress={self.progress!r} must be auto, bar, lines or none")


@dataclass
class Config:
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    data: DataConfig = MISSING
    schedule: ScheduleConfig = MISSING
    trainer: TrainerConfig = MISSING
    logging: LoggingConfig = MISSING
    seed: int = 0
    resume: str = "auto"  # auto | never | <path to a checkpoint>
    run_dir: str = "${hydra:runtime.output_dir}"
    experiment_name: str = ""  # set by experiment presets
    recipe: dict[str, Any] = field(default_factory=dict)  # per-optimizer lr/wd tables of presets
    notes: str = ""

    def __post_init__(self):
        _require(0 <= self.seed < 2**32, f"seed={self.seed} must be in [0, 2**32) (numpy's seed range)")
        _require(bool(self.resume), "resume must be auto, never or a checkpoint path")
        if all(isinstance(g, c) for g, c in ((self.schedule, ScheduleConfig), (self.trainer, TrainerConfig),
                                             (self.optimizer, OptimizerConfig))):
            _check_schedule_fits(self.schedule, self.trainer.epochs, self.optimizer.lr)


def _check_schedule_fits(s: ScheduleConfig, epochs: int, lr: float) -> None:
    """The schedule against the run it schedules (adarem/schedule.py): step milestones fall after the
    warm-up, the warm-up starts no higher than the lr it rises to, and the cosine decays to a min_lr no
    higher than the lr it starts from. A run shorter than its schedule (milestones at or beyond
    trainer.epochs, a warm-up as long as the run) is accepted as the schedule cut at trainer.epochs:
    a smoke run of a longer recipe (adarem.schedule.truncation says so at start-up)."""
    if s.name == "step":
        ms = list(s.milestones)
        _require(bool(ms), "schedule.milestones=[] never decays the lr; give epoch numbers, or use schedule=constant")
        _require(ms[0] > s.warmup_epochs,
                 f"schedule.milestones={ms} must all be > schedule.warmup_epochs={s.warmup_epochs} (a decay during "
                 f"the warm-up is overridden by it); move the milestones or shorten the warm-up")
    if s.warmup_epochs > 0:
        _require(s.warmup_lr <= lr,
                 f"schedule.warmup_lr={s.warmup_lr} is above optimizer.lr={lr}: the warm-up would lower the lr, not "
                 f"raise it; set schedule.warmup_lr <= optimizer.lr (0 starts from zero)")
    if s.name == "cosine":
        _require(s.min_lr <= lr,
                 f"schedule.min_lr={s.min_lr} is above optimizer.lr={lr}: the cosine would raise the lr, not decay "
                 f"it; set schedule.min_lr <= optimizer.lr (0 decays to zero)")


def resize_for_crop(image_size) -> int:
    """The shorter side an image is resized to before the centre crop of ``image_size`` pixels
    that evaluates it: image_size / 0.875 (256 for 224, ImageNet's evaluation framing)."""
    return round(int(image_size) / 0.875)


def register_configs() -> None:
    from adarem.run.identity import register_resolver

    register_resolver()
    if not OmegaConf.has_resolver("resize_for_crop"):  # configs/data/{folder,imagenet}.yaml's val_resize
        OmegaConf.register_new_resolver("resize_for_crop", resize_for_crop)
    # One schema for the whole tree: every group's YAML merges into its typed field of Config
    # (ModelConfig, OptimizerConfig, ...), which rejects unknown keys and wrong types. No schema is
    # stored inside a group, where `--help` would list it as an option.
    ConfigStore.instance().store(name="config_schema", node=Config)


def _unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys that no schema field declares (Hydra's ``+group.key=value`` can add them)."""
    import dataclasses

    unknown = []
    schema = {f.name: f.type for f in dataclasses.fields(Config)}
    groups = {"model": ModelConfig, "optimizer": OptimizerConfig, "data": DataConfig, "schedule": ScheduleConfig,
              "trainer": TrainerConfig, "logging": LoggingConfig}
    for key in cfg:
        if key not in schema and key != "hydra":
            unknown.append(str(key))
        elif key in groups and isinstance(cfg[key], DictConfig):
            fields = {f.name for f in dataclasses.fields(groups[key])}
            unknown += [f"{key}.{k}" for k in cfg[key] if k not in fields]
    return unknown


def validate(cfg: DictConfig) -> Config:
    """Instantiate the schema (running every range check); raise ConfigError on a bad value."""
    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}: no such setting (check the spelling; "
                          f"see configs/ and adarem/config.py)")
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf validation errors carry several lines; keep the first
        raise ConfigError(str(exc).strip().splitlines()[0]) from exc


def to_container(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)

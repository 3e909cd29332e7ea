"""Real Hydra composition of every config group and preset against the structured schema."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from adarem.config import ConfigError, register_configs, validate
from tests.conftest import REPO

register_configs()  # the schema train.py registers before Hydra composes

OPTIMIZERS = ["sgd", "adam", "adamw", "adarem", "adarem_m", "adarem_nodecay"]
EXPERIMENTS = ["paper_resnet18", "paper_resnet50", "paper_mobilenetv2", "paper_shufflenetv2", "fashion_mnist_small",
               "fashion_mnist"]


def make(overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "run_dir=/tmp/x"])
    return validate(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_preset_composes_with_every_optimizer(experiment, optimizer):
    cfg = make([f"experiment={experiment}", f"optimizer={optimizer}"])
    assert cfg.optimizer.variant == optimizer
    if experiment.startswith("paper_"):
        assert cfg.trainer.batch_size == 256 and cfg.data.name == "imagenet"
        assert cfg.optimizer.lr == cfg.recipe["lr"][optimizer]
        assert cfg.optimizer.weight_decay == cfg.recipe["weight_decay"][optimizer]


def test_resnet_recipes_follow_the_standard_schedule():
    cfg = make(["experiment=paper_resnet50", "optimizer=sgd"])
    assert (cfg.model.name, cfg.trainer.epochs, cfg.optimizer.lr, cfg.optimizer.momentum) == ("resnet50", 90, 0.1, 0.9)
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.schedule.name == "step"
    assert list(cfg.schedule.milestones) == [30, 60, 80]
    assert make(["experiment=paper_resnet50", "optimizer=adarem_m"]).optimizer.lr == 0.01
    assert make(["experiment=paper_shufflenetv2"]).model.name == "torchvision.shufflenet_v2_x1_0"
    # a command-line lr still wins over the preset's table
    assert make(["experiment=paper_resnet50", "optimizer=adam", "optimizer.lr=0.002"]).optimizer.lr == 0.002


def test_user_facing_keys_exist():
    cfg = make(["seed=3", "resume=never", "trainer.epochs=2", "trainer.batch_size=32", "trainer.deterministic=true",
                "optimizer.lr=0.05", "data=folder", "data.root=/x", "data.loader=dali", "logging.wandb=disabled"])
    assert (cfg.seed, cfg.resume, cfg.data.loader, cfg.logging.wandb) == (3, "never", "dali", "disabled")
    assert make(["data.loader=dali"]).data.loader == "dali"  # digits is a tree of JPEGs: DALI reads it


@pytest.mark.parametrize("override, message", [
    ("optimizer.decay=0", "optimizer.decay=0.0 must be in (0, 1]"),
    ("optimizer.momentum=1", "optimizer.momentum=1.0 must be in [0, 1)"),
    ("data.loader=nvjpeg", "data.loader='nvjpeg' must be torch or dali"),
    ("trainer.amp=fp8", "trainer.amp='fp8'"),
    ("logging.wandb=maybe", "logging.wandb='maybe'"),
    ("schedule.decay_rate=0", "schedule.decay_rate=0.0"),
])
def test_out_of_range_values_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        make([override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer=adam", "optimizer.momentum=0.5"], "optimizer.momentum=0.5 is not read by optimizer.name=adam (of "
                                                   "its optimizer-specific settings it reads betas, eps)"),
    (["optimizer=adarem_horizon", "optimizer.decay=0.9"], "optimizer.decay=0.9 is not read by optimizer.name=adarem "
                                                          "with optimizer.decay_horizon=1"),
    (["optimizer=sgd_plain", "optimizer.nesterov=true"], "optimizer.nesterov=true needs optimizer.momentum > 0"),
    (["optimizer=adamw", "optimizer.decoupled_weight_decay=true"], "optimizer.decoupled_weight_decay=True is not read"),
    (["optimizer=sgd", "optimizer.betas=[0.8,0.9]"], "optimizer.betas=[0.8, 0.9] is not read by optimizer.name=sgd"),
    (["optimizer=adarem", "optimizer.nesterov=true"], "optimizer.nesterov=True is not read by optimizer.name=adarem"),
    (["schedule=constant", "schedule.min_lr=0.001"], "schedule.min_lr=0.001 is not read by schedule.name=constant"),
    (["schedule=cosine", "schedule.milestones=[5]"], "schedule.milestones=[5] is not read by schedule.name=cosine"),
    (["schedule.warmup_lr=0.01"], "schedule.warmup_lr=0.01 is not read by schedule.name=cosine without a warm-up"),
    # helper-92: each trained the 10 digits as before, in a run directory and a table setting of its own
    (["data.num_classes=5"], "data.num_classes=5 is not read by data.name=digits with data.loader=torch and "
                             "data.random_resized_crop=false (of its data-specific settings it reads none)"),
    (["data.synthetic_train_size=3"], "data.synthetic_train_size=3 is not read by data.name=digits"),
    (["data=fashion_mnist", "data.val_resize=64"], "data.val_resize=64 is not read by data.name=fashion_mnist"),
    (["data=imagenet", "data.random_resized_crop=false", "data.val_resize=300"],
     "data.val_resize=300 is not read by data.name=imagenet with data.loader=torch and data.random_resized_crop=false"),
    (["data=imagenet", "data.dali_threads=2"], "data.dali_threads=2 is not read by data.name=imagenet with "
                                               "data.loader=torch (of its data-specific settings it reads val_resize)"),
    (["data=synthetic", "data.val_resize=300"], "data.val_resize=300 is not read by data.name=synthetic"),
])
def test_a_setting_the_chosen_optimizer_schedule_or_data_does_not_read_is_refused(overrides, message):
    """optimizer=adam optimizer.momentum=0.5 trained plain Adam, in a run directory of its own, the
    setting believed changed; the same for a schedule's keys and a dataset's or loader's."""
    with pytest.raises(ConfigError) as err:
        make(overrides)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_settings_the_choice_reads_or_leaves_at_default_are_accepted():
    make(["optimizer=adamw", "optimizer.eps=1e-6", "optimizer.betas=[0.8,0.9]"])
    make(["optimizer=sgd", "optimizer.momentum=0.5", "optimizer.nesterov=true"])
    make(["optimizer=adarem_m", "optimizer.beta=0.5", "optimizer.decoupled_weight_decay=true"])
    make(["schedule=step", "schedule.milestones=[5]", "schedule.warmup_epochs=1", "schedule.warmup_lr=0.01"])
    make(["optimizer=adam", "optimizer.momentum=0.0"])  # the default: no setting made
    make(["data=imagenet", "data.val_resize=300", "data.loader=dali", "data.dali_threads=2"])
    make(["data=imagenet", "data.random_resized_crop=false"])  # the preset's val_resize means the default
    make(["data=folder", "data.root=/x", "data.image_size=64", "data.random_resized_crop=false"])
    make(["data=synthetic", "data.num_classes=10", "data.synthetic_train_size=64", "data.synthetic_val_size=32"])
    for experiment in ("paper_resnet50", "paper_resnet18", "paper_mobilenetv2", "paper_shufflenetv2",
                       "fashion_mnist"):
        for optimizer in ("sgd", "sgd_plain", "adam", "adamw", "adarem", "adarem_m", "adarem_horizon",
                          "adarem_nodecay"):
            make([f"experiment={experiment}", f"optimizer={optimizer}"])


def test_schema_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(Exception, match="Could not override 'trainer.epoch'"):
        make(["trainer.epoch=3"])
    with pytest.raises(Exception, match="trainer.epochs=ten"):
        make(["trainer.epochs=ten"])


@pytest.mark.parametrize("data", ["imagenet", "folder"])
def test_the_val_resize_of_image_trees_follows_the_image_size(data):
    """The presets pinned val_resize: 256, right at 224 only: data.image_size=16 then evaluated the
    centre 16 pixels of a 256-pixel image (87 % error against 46 %, helper-82)."""
    from adarem.data.transforms import val_resize

    assert val_resize(make([f"data={data}", "data.root=/tmp/x"]).data) == 256  # 224 / 0.875, as before
    assert val_resize(make([f"data={data}", "data.root=/tmp/x", "data.image_size=64"]).data) == 73
    assert val_resize(make([f"data={data}", "data.root=/tmp/x", "data.image_size=64", "data.val_resize=80"]).data) == 80

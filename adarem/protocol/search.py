"""The search space and the selection rule: lr grids (log, half-decade steps), their extension
when the best point sits on an edge, and the score of a trial (mean holdout error over the
selection seeds, ties broken by the mean holdout loss; anything unfinished scores worst)."""

from __future__ import annotations

import math

from adarem.config import LR_MAX

SELECT_SEED0 = 1000  # selection seeds are 1000, 1001, ...: disjoint from the final seeds 0, 1, ...
WD_FACTORS = (0.1, 1.0, 10.0)  # search=lr_wd: weight decays tried, relative to the optimizer's default
# Two mean holdout errors this close are the same number of mistakes: an error is 100 * k / n, so two
# different counts differ by at least 100 / (n * seeds) (> 1e-6 for any holdout below 10^7 images x
# 10 seeds), while the same counts summed in another order differ by float rounding (~1e-14): 57+59
# and 56+60 wrong of 360 give 16.111111111111107 and 16.11111111111111.
ERR_TIE = 1e-9


def num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def score(res: dict) -> float:
    """A run's error for selection: anything but a finished run with a finite error is worst."""
    err = res.get("err")
    if res.get("status") != "finished" or not isinstance(err, (int, float)) or not math.isfinite(err):
        return math.inf
    return float(err)


def lr_factors(own: dict) -> list[float]:
    """The grid before extension, as factors of each optimizer's default lr: lr_grid as given, or
    10^-lr_span .. 10^+lr_span in steps of 10^lr_step."""
    if own["lr_grid"]:
        return sorted(own["lr_grid"])
    n = int(round(own["lr_span"] / own["lr_step"]))
    return [10 ** (k * own["lr_step"]) for k in range(-n, n + 1)]


def lowest_lr(lr0: float, own: dict) -> float:
    """The lowest lr of the grid before extension of an optimizer whose default lr is ``lr0``, rounded
    as the trial's override writes it. Extensions never go below ``lr_floor`` (Search.extend)."""
    return float(f"{lr0 * min(lr_factors(own)):.6g}")


def lr_floor(schedule) -> tuple[float, str]:
    """The lowest lr a trial may run at under this schedule (adarem/config.py refuses a lower one),
    and the key that sets it: a cosine's min_lr, a warm-up's warmup_lr; (0, "") when nothing does."""
    floors = [(0.0, "")]
    if schedule.name == "cosine" and float(schedule.min_lr) > 0:
        floors.append((float(schedule.min_lr), f"schedule.min_lr={float(schedule.min_lr):g}"))
    if float(schedule.warmup_epochs) > 0 and float(schedule.warmup_lr) > 0:
        floors.append((float(schedule.warmup_lr), f"schedule.warmup_lr={float(schedule.warmup_lr):g}"))
    return max(floors)


def weight_decays(default_wd: float, search: str) -> list[float]:
    """search=lr: the optimizer's own weight decay; search=lr_wd: 0.1x, 1x, 10x it (1e-4 where it is 0)."""
    return [default_wd] if search == "lr" else [(default_wd or 1e-4) * f for f in WD_FACTORS]


class Search:
    """The trials of one optimizer: scores per (lr, wd), the chosen point, whether it is interior."""

    def __init__(self, opt: str, lr0: float, wds: list[float], factors: list[float], step: float,
                 floor: tuple[float, str] = (0.0, "")):
        self.opt, self.lr0, self.wds, self.step = opt, lr0, wds, step
        self.lrs = [lr0 * f for f in factors]
        self.results: dict[tuple[float, float, int], dict] = {}
        self.extensions = 0
        self.floor, self.floor_key = floor  # extensions stop above it (lr_floor), and below LR_MAX
        self.blocked = {"low": "", "high": ""}  # why that edge was not extended, for the report

    def trials(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.wds]

    def point_score(self, lr: float, wd: float, seeds: list[int]) -> tuple[float, float]:
        """(mean holdout error, mean holdout loss) over the selection seeds; worst if any failed."""
        res = [self.results.get((lr, wd, s), {}) for s in seeds]
        errs = [score(r) for r in res]
        if any(math.isinf(e) for e in errs):
            return math.inf, math.inf
        losses = [r.get("loss", math.nan) for r in res]
        return sum(errs) / len(errs), (sum(losses) / len(losses) if all(map(math.isfinite, losses)) else math.inf)

    def best(self, seeds: list[int]) -> tuple[float, float, float, float]:
        """(lr, wd, mean holdout error, mean holdout loss) of the best point tried."""
        scored = [(*self.point_score(lr, wd, seeds), lr, wd) for lr, wd in self.trials()]
        least = min(t[0] for t in scored)
        # the same error (number of mistakes) up to float rounding is a tie, broken by the loss
        tied = [t for t in scored if t[0] == least or abs(t[0] - least) <= ERR_TIE * max(1.0, abs(least))]
        err, loss, lr, wd = min(tied, key=lambda t: t[1])
        return lr, wd, err, loss

    def edge(self, lr: float) -> str:
        if len(self.lrs) < 3:
            return "not searched (fewer than 3 lrs)"
        return "low" if lr == min(self.lrs) else "high" if lr == max(self.lrs) else ""

    def wd_edge(self, wd: float) -> str:
        """search=lr_wd: "low"/"high" when the chosen weight decay is the lowest/highest of its grid
        (never extended: the report flags it), else ""."""
        if len(self.wds) < 3:
            return ""
        return "low" if wd == min(self.wds) else "high" if wd == max(self.wds) else ""

    def extend(self, side: str) -> float | None:
        """Add the next lr beyond the ``side`` edge and return it; None, and ``blocked[side]`` says why,
        when that lr (as the trial's override writes it, 6 digits, which the message shows too: 3
        could read as equal to the limit) is below the schedule's floor or above LR_MAX: train.py
        refuses such a run, which would stop the comparison midway."""
        lr = min(self.lrs) / 10 ** self.step if side == "low" else max(self.lrs) * 10 ** self.step
        if side == "low" and float(f"{lr:.6g}") < self.floor:
            self.blocked["low"] = f"not extended below: the next lr {lr:.6g} is under {self.floor_key}"
            return None
        if side == "high" and float(f"{lr:.6g}") > LR_MAX:
            self.blocked["high"] = f"not extended above: the next lr {lr:.6g} is over optimizer.lr's limit {LR_MAX:g}"
            return None
        self.lrs.append(lr)
        self.lrs.sort()
        self.extensions += 1
        return lr

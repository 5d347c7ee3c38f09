"""The ``[training]`` table: every key optional, each checked for type, range and choice.

``check_training(table, ...)`` returns the full table (defaults filled in, a dataset path made
absolute, relative to the spec file) and reports each mistake through ``report``.
"""

from __future__ import annotations

import math
import os

from ._values import INT64_MAX, described, is_int, is_number, show, suggestion

DEFAULTS = {
    "dataset": "fashion-mnist",
    "loss": "cross_entropy",
    "ignore_index": -100,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "schedule": "none",
    "step_size": 10,
    "gamma": 0.1,
    "warmup_epochs": 0,
    "batch_size": 64,
    "epochs": 10,
    "seed": 0,
    "augment": [],
    "normalize": True,
    "validation": 0.1,
    "label_smoothing": 0.0,
    "clip_grad_norm": 0.0,
    "early_stopping": 0,
    "plateau_patience": 2,
}

# Names other tools use for our keys, too far from them for difflib to suggest.
ALIASES = {"learning_rate": "lr", "l2": "weight_decay", "decay": "weight_decay",
           "criterion": "loss", "random_seed": "seed"}

BUILTIN_DATASETS = ("fashion-mnist", "shapes", "shapes-foreground", "shape-classes")
AUGMENTATIONS = ("flip", "crop", "shift")

# Keys that only mean something for some settings of another key: setting them otherwise is
# almost always a mistake (momentum 0.5 written for Adam, say), so it is reported.
APPLIES_TO = {
    "momentum": ("optimizer", ("sgd",)),
    "nesterov": ("optimizer", ("sgd",)),
    "betas": ("optimizer", ("adam", "adamw")),
    "eps": ("optimizer", ("adam", "adamw")),
    "step_size": ("schedule", ("step",)),
    "gamma": ("schedule", ("step", "plateau")),
    "plateau_patience": ("schedule", ("plateau",)),
    "label_smoothing": ("loss", ("cross_entropy",)),
}


def _integer(low: int, high: int):
    def check(value):
        if not is_int(value) or not low <= value <= high:
            upper = f" and ≤ {high}" if high < INT64_MAX else ""
            return f"must be an integer ≥ {low}{upper}; got {show(value)}."
        return None
    return check


def _number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    lower = f"> {low:g}" if low_open else f"≥ {low:g}"
    upper = "" if high == math.inf else (f" and < {high:g}" if high_open else f" and ≤ {high:g}")

    def inside(value) -> bool:
        return (is_number(value) and math.isfinite(value)
                and (value > low if low_open else value >= low)
                and (value < high if high_open else value <= high))

    def check(value):
        if not inside(value):
            return f"must be a finite number {lower}{upper}; got {show(value)}."
        return None
    check.inside = inside
    check.rule = f"{lower}{upper}"
    return check


def _choice(options: tuple[str, ...]):
    def check(value):
        if not isinstance(value, str):
            return f"must be one of {_listed(options)}; got {described(value)}."
        if value not in options:
            return f"'{value}' is not a choice; {suggestion(value, options, 'choices')}"
        return None
    return check


def _boolean(value):
    if not isinstance(value, bool):
        return f"must be true or false; got {described(value)}."
    return None


_beta = _number(0.0, 1.0, high_open=True)


def _betas(value):
    if not (isinstance(value, list) and len(value) == 2 and all(map(_beta.inside, value))):
        return f"must be two numbers {_beta.rule}, e.g. [0.9, 0.999]; got {show(value)}."
    return None


def _augment(value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"must be an array of names from {_listed(AUGMENTATIONS)}; got {show(value)}."
    for item in value:
        if item not in AUGMENTATIONS:
            return f"'{item}' is not an augmentation; {suggestion(item, AUGMENTATIONS, 'ones')}"
    if len(set(value)) != len(value):
        return f"lists an augmentation twice; got {show(value)}."
    return None


def _validation(value):
    if isinstance(value, str):
        if value and value.isidentifier() and value != "test":
            return None
        return (f"must name a split the data set holds (e.g. \"val\": arrays x_val and y_val "
                f"in an .npz, a val/ folder beside train/), not {show(value)}; the test split "
                f"is never used for selection.")
    if not is_number(value) or isinstance(value, bool) or not (0 <= value < 1):
        return (f"must be a fraction ≥ 0 and < 1 of the training set to hold out for "
                f"validation (0 for none), or the name of a split such as \"val\"; got "
                f"{show(value)}.")
    return None


def _listed(options) -> str:
    return ", ".join(f"'{o}'" for o in options)


CHECKS = {
    "loss": _choice(("cross_entropy", "mse")),
    "ignore_index": _integer(-INT64_MAX, INT64_MAX),
    "optimizer": _choice(("sgd", "adam", "adamw")),
    "lr": _number(0.0, low_open=True),
    "momentum": _number(0.0, 1.0, high_open=True),
    "nesterov": _boolean,
    "weight_decay": _number(0.0),
    "betas": _betas,
    "eps": _number(0.0, low_open=True),
    "schedule": _choice(("none", "step", "cosine", "plateau")),
    "step_size": _integer(1, 10**6),
    "gamma": _number(0.0, low_open=True),
    "warmup_epochs": _integer(0, 10**6),
    "batch_size": _integer(1, 2**20),
    "epochs": _integer(1, 10**6),
    "seed": _integer(0, INT64_MAX),
    "augment": _augment,
    "normalize": _boolean,
    "validation": _validation,
    "label_smoothing": _number(0.0, 1.0, high_open=True),
    "clip_grad_norm": _number(0.0),
    "early_stopping": _integer(0, 10**6),
    "plateau_patience": _integer(0, 10**6),
}


def _dataset(value, spec_file: str | None) -> tuple[str | None, str | None]:
    """(message, resolved value): a built-in name, or an existing .npz file or folder."""
    if not isinstance(value, str) or not value:
        return (f"must be {_listed(BUILTIN_DATASETS)}, a path to an .npz file or a folder of "
                f"class folders; got {show(value)}."), None
    if value in BUILTIN_DATASETS:
        return None, value
    base = os.path.dirname(os.path.abspath(spec_file)) if spec_file else os.getcwd()
    path = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if os.path.isdir(path):
        return None, path
    if os.path.isfile(path):
        if path.endswith(".npz"):
            return None, path
        return (f"'{value}' is a file but not an .npz archive; give an .npz with arrays x and y, "
                f"or a folder with one sub-folder per class."), None
    hint = suggestion(value, BUILTIN_DATASETS, "built-in data sets")
    relative = " (relative paths are relative to the spec file)" if spec_file else ""
    return (f"'{value}' is neither a built-in data set nor an existing path: {path} does not "
            f"exist{relative}; {hint}"), None


def check_training(table, spec_file: str | None, report) -> dict:
    """Validate ``[training]``; ``report(message, key)`` records a problem.

    Returns the table with every default filled in; a value with a problem keeps its default.
    """
    result = dict(DEFAULTS)
    result["betas"] = list(DEFAULTS["betas"])
    result["augment"] = []
    if table is None:
        return result
    if not isinstance(table, dict):
        report(f"must be a table ([training]); got {described(table)}.", None)
        return result
    bad = set()
    for key, value in table.items():
        if key == "dataset":
            message, resolved = _dataset(value, spec_file)
            value = resolved
        elif key in CHECKS:
            message = CHECKS[key](value)
        elif key in ALIASES:
            message = f"unknown key; did you mean '{ALIASES[key]}'?"
        else:
            message = f"unknown key; {suggestion(key, DEFAULTS, 'keys')}"
        if message:
            report(message, key)
            bad.add(key)
        else:
            result[key] = value
    for key, (other, settings) in APPLIES_TO.items():
        # A default written out (as in the documented table) is harmless; another value is not.
        if key in table and key not in bad and table[key] != DEFAULTS[key] \
                and result[other] not in settings:
            needed = " or ".join(f"'{s}'" for s in settings)
            report(f"applies only when {other} = {needed}, but {other} is '{result[other]}'; "
                   f"remove {key} or set {other}.", key)
    if result["nesterov"] and result["momentum"] == 0:
        report("Nesterov momentum needs momentum > 0; set momentum (e.g. 0.9) or nesterov = "
               "false.", "nesterov")
    for key, used in (("early_stopping", result["early_stopping"] > 0),
                      ("schedule", result["schedule"] == "plateau")):
        if used and result["validation"] == 0:
            report(f"{key} = {show(table[key])} watches the validation score, but validation = "
                   f"0 holds none out; set validation (e.g. 0.1) or remove {key}.", key)
    if result["warmup_epochs"] > result["epochs"]:
        report(f"{result['warmup_epochs']} warm-up epochs exceed the {result['epochs']} epochs of "
               f"training; lower warmup_epochs or raise epochs.", "warmup_epochs")
    return result

"""What the studies in bench/ share: their JSON-lines record files and mean ± std.

A study appends one JSON object per finished run (`append_record`, fsync'd, so a kill loses at
most the run in progress) and, when started again, reads them back (`read_records`, which
drops a line cut short by a kill) to skip what is done. `summarise` and `format_mean_std`
turn the runs of one cell into the tables' "mean ± std" (sample std over seeds).
`add_dataclass_flags` / `dataclass_from_args` make a study's settings dataclass its command
line, `settings_id` names a configuration in the records, `git_commit` the code that ran it.
"""

import dataclasses
import hashlib
import json
import os
import statistics
import subprocess


def read_records(path):
    """The records of a JSON-lines file, [] if it does not exist."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: rerun that run
                    pass
    return records


def append_record(path, record):
    """Appends `record` (a JSON-ready dict) as one line and syncs it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarise(values):
    """(mean, sample std or None for one value, count) of the values that are not None;
    (None, None, 0) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std, len(values)


def format_mean_std(mean, std, scale=100.0, digits=1):
    """"80.1 ± 0.4" (fractions shown in %), "80.1" without a std, "—" without a mean."""
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file, so a reader never sees half of it."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def settings_id(settings):
    """A short stable hash of a JSON-ready dict: records with equal ids ran the same settings."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def git_commit(repo):
    """The short commit `repo` is checked out at ("unknown" outside git)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def add_dataclass_flags(parser, cls, quick=None, skip=()):
    """One `--<field>` flag per field of the dataclass `cls` (int, float or str, from its
    annotation; default None = the field's default), its help naming the default and the
    `quick` override."""
    quick = quick or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        annotation = field.type if isinstance(field.type, str) else field.type.__name__
        kind = {"int": int, "float": float, "str": str}.get(annotation.split(" ")[0], str)
        note = f" (--quick: {quick[field.name]})" if field.name in quick else ""
        parser.add_argument(f"--{field.name}", type=kind, default=None,
                            help=f"default {field.default}{note}")


def dataclass_from_args(cls, args, quick=None, **fixed):
    """`cls` from the flags of `add_dataclass_flags`: the defaults, then `quick`'s values when
    `args.quick`, then the flags given, then `fixed`."""
    values = dict(quick or {}) if getattr(args, "quick", False) else {}
    for field in dataclasses.fields(cls):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    values.update(fixed)
    return cls(**values)

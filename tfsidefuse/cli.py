"""The ``tfsidefuse`` command: prepare, train, evaluate, run (all three), presets, verify, export, synthetic, analyze.

Every subcommand but ``export``, ``synthetic`` and ``analyze`` takes ``--config path.yaml``; ``--set section.key=value``
overrides single keys (values are parsed as YAML).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _overrides(pairs: list[str]) -> dict:
    from tfsidefuse.errors import ConfigError

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--set {pair!r}: the value {value!r} is not valid YAML ({problem})") from None
    return out


def _load(args):
    from tfsidefuse.config import load_config

    return load_config(args.config, _overrides(args.set))


def _print_rows(rows: dict) -> None:
    from tfsidefuse.evaluation import format_table

    print(format_table(rows))


def cmd_prepare(args) -> int:
    from tfsidefuse.training.trainer import prepare

    config = _load(args)
    options = [f"--{o}" for o in args.beam_option or []] + list(args.pipeline_args or [])
    if options and not args.runner:
        from tfsidefuse.errors import ConfigError

        raise ConfigError(f"pipeline options {options} need --runner (e.g. --runner DirectRunner)")
    for flag in args.pipeline_args or []:
        if not flag.startswith("-"):
            from tfsidefuse.errors import ConfigError

            raise ConfigError(f"unexpected argument {flag!r}; pipeline options go after `--`, e.g. -- --project=p")
    prepared = prepare(config, overwrite=args.overwrite, runner=args.runner, pipeline_options=options or None)
    print(f"prepared dataset: {prepared.directory}")
    print(json.dumps(prepared.stats, indent=2))
    return 0


def cmd_train(args) -> int:
    from tfsidefuse.training.trainer import train

    config = _load(args)
    result = train(config, evaluate_test=not args.no_test, overwrite=args.overwrite)
    rows = {
        f"{config.model.name} ({split})": result.metrics[split]
        for split in ("valid", "test")
        if split in result.metrics
    }
    _print_rows(rows)
    print(f"model saved to {os.path.join(config.training.run_dir, 'model.keras')}")
    return 0


def cmd_evaluate(args) -> int:
    from tfsidefuse.training.trainer import evaluate

    config = _load(args)
    _print_rows(evaluate(config, args.split, with_baseline=not args.no_baseline))
    return 0


def cmd_run(args) -> int:
    from tfsidefuse.config import load_config
    from tfsidefuse.evaluation import evaluate_most_popular
    from tfsidefuse.training.trainer import check_run_dir, prepare, train

    # Validate every config and run directory before any work starts.
    configs = [load_config(path, _overrides(args.set)) for path in args.config]
    for config in configs:
        check_run_dir(config.training.run_dir, config, overwrite=args.overwrite)
    rows, baselines, notes = {}, {}, []
    several_datasets = len({c.dataset.prepared_dir for c in configs}) > 1
    for config in configs:
        prepared = prepare(config, overwrite=args.overwrite)
        name = prepared.schema.name
        print(
            f"dataset {name}: {prepared.stats['users']} users, {prepared.stats['items']} items, "
            f"{prepared.stats['interactions']} interactions (prepared in {prepared.directory})"
        )
        result = train(config, prepared, overwrite=args.overwrite)
        m = result.metrics
        label = f"{config.model.name} [{name}]" if several_datasets else config.model.name
        rows[f"{label} (valid)"] = m["valid"]
        rows[f"{label} (test)"] = m["test"]
        notes.append(
            f"{label}: {m['epochs_run']} epochs (best {m['best_epoch']}), training {m['train_seconds']:.1f} s, "
            f"{m['train_sequences_per_second']:.0f} sequences/s"
        )
        if prepared.directory not in baselines:
            baselines[prepared.directory] = (name, evaluate_most_popular(prepared, "test"))
    for name, values in baselines.values():
        label = f"most-popular [{name}]" if several_datasets else "most-popular"
        rows[f"{label} (test)"] = values
    print()
    print("\n".join(notes))
    _print_rows(rows)
    return 0


def cmd_verify(args) -> int:
    from tfsidefuse.data.manifest import check_prepared
    from tfsidefuse.data.prepared import PreparedDataset

    prepared = PreparedDataset.open(args.prepared_dir)
    manifest = check_prepared(prepared.directory, prepared.manifest, hashes=True)
    splits = ", ".join(
        f"{name} {entry['records']} records in {entry['shards']} shards" for name, entry in manifest["splits"].items()
    )
    print(f"{prepared.directory}: {len(manifest['files'])} files match the manifest ({splits})")
    print(f"fingerprint {manifest['fingerprint']}")
    if manifest.get("raw_inputs"):
        print(f"raw inputs {manifest['raw_fingerprint']} ({', '.join(sorted(manifest['raw_inputs']))})")
    return 0


def cmd_presets(args) -> int:
    from tfsidefuse.presets import copy_preset, preset_names

    if args.copy:
        name, destination = args.copy
        print(f"copied preset {name} to {copy_preset(name, destination)}")
        return 0
    for name in preset_names():
        print(name)
    return 0


def cmd_export(args) -> int:
    from tfsidefuse.export import export_model

    path = export_model(
        args.run,
        args.base,
        version=args.version,
        k=args.k,
        exclude_history=args.exclude_history,
        prepared_dir=args.prepared,
        model_name=args.model_name,
        warmup=args.warmup,
    )
    print(f"exported {args.run} to {path}")
    return 0


def cmd_synthetic(args) -> int:
    from tfsidefuse.data.synthetic import write_synthetic_dataset

    log = write_synthetic_dataset(
        args.out,
        num_users=args.users,
        num_items=args.items,
        num_categories=args.categories,
        num_brands=args.brands,
        mean_length=args.mean_length,
        exponent=args.exponent,
        seed=args.seed,
    )
    print(f"wrote {log.num_users} users, {log.num_events} events over {log.num_items} items to {args.out}")
    print(f"prepare it with the dataset section: {{source: recbole, path: {args.out}, prepared_dir: <directory>}}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tfsidefuse import __version__

    parser = argparse.ArgumentParser(prog="tfsidefuse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tfsidefuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of every step")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text, many=False):
        p = sub.add_parser(name, help=help_text)
        if many:
            p.add_argument(
                "--config", required=True, action="append", help="YAML run configuration or preset name (repeatable)"
            )
        else:
            p.add_argument("--config", required=True, help="YAML run configuration or preset name (e.g. demo/sasrec)")
        p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config key")
        p.set_defaults(fn=fn)
        return p

    p = add("prepare", cmd_prepare, "read raw data and write the prepared dataset (TFRecords, vocabularies)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    p.add_argument(
        "--runner",
        help="prepare with Apache Beam on this runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...); "
        "needs pip install 'tfsidefuse[beam]'",
    )
    p.add_argument(
        "--beam-option",
        action="append",
        metavar="KEY=VALUE",
        help="a Beam pipeline option, e.g. direct_num_workers=2 or project=my-project (repeatable)",
    )
    p.add_argument("pipeline_args", nargs="*", help="more Beam pipeline options, after `--` (e.g. -- --region=r)")
    p = add("train", cmd_train, "train a model; save it with its validation and test metrics")
    p.add_argument("--no-test", action="store_true", help="skip the test-split evaluation")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run of another config in run_dir")
    p = add("evaluate", cmd_evaluate, "evaluate a trained run with full-ranking metrics")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--no-baseline", action="store_true", help="skip the most-popular baseline")
    p = add(
        "run",
        cmd_run,
        "prepare (if needed), train and evaluate one or more configs; print one metrics table",
        many=True,
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing prepared dataset and finished runs of other configs in the run directories",
    )
    p = sub.add_parser("presets", help="list the shipped configs (usable as --config <dataset>/<model>), or copy one")
    p.add_argument("--copy", nargs=2, metavar=("NAME", "FILE"), help="write preset NAME to FILE, to edit it")
    p.set_defaults(fn=cmd_presets)
    p = sub.add_parser("verify", help="check every file of a prepared dataset against its manifest (sizes, hashes)")
    p.add_argument("prepared_dir", help="the prepared dataset directory")
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("export", help="export a trained run as a versioned SavedModel for TensorFlow Serving")
    p.add_argument("--run", required=True, help="training run directory (model.keras, config.yaml)")
    p.add_argument("--base", required=True, help="models directory; the export goes to <base>/<version>/")
    p.add_argument("--version", type=int, help="version number (default: one more than the largest existing)")
    p.add_argument("--k", type=int, default=10, help="items returned per request (default 10)")
    p.add_argument("--exclude-history", action="store_true", help="never recommend items already in the request")
    p.add_argument("--prepared", help="prepared dataset directory (default: the one in the run's config)")
    p.add_argument("--model-name", help="model name in the warm-up requests (default: the models directory's name)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up requests from the validation split (0-1000)")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser(
        "synthetic", help="write a synthetic log of any size (power-law popularity) as RecBole files for `prepare`"
    )
    p.add_argument("--out", required=True, help="directory for the files (<name>.inter, <name>.item: name = its name)")
    p.add_argument("--users", type=int, default=10_000, help="users, one sequence each (default 10000)")
    p.add_argument("--items", type=int, default=10_000, help="items in the catalogue (default 10000)")
    p.add_argument("--categories", type=int, default=100, help="item categories (default 100)")
    p.add_argument("--brands", type=int, default=1_000, help="brands, at least the categories (default 1000)")
    p.add_argument("--mean-length", type=float, default=10.0, help="mean events per user, at least 3 (default 10)")
    p.add_argument("--exponent", type=float, default=1.0, help="power-law exponent of item popularity (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(fn=cmd_synthetic)
    from tfsidefuse.analysis.cli import add_analyze_parser

    add_analyze_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from tfsidefuse.errors import UserError

    # Mistakes in what the user gave (configs, options, data files, directories) end in one message and code 2;
    # anything else is a bug in tfsidefuse and keeps its traceback.
    errors = (UserError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
    try:
        return args.fn(args)
    except errors as err:
        print(f"tfsidefuse {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2


def _message(err: Exception) -> str:
    """The message of a user error; OS errors name their file."""
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.strerror}: {err.filename}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())

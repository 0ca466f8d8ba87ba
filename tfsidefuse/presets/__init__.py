"""The shipped configs, as named presets: ``<dataset>/<model>`` (e.g. ``demo/sasrec``, ``amazon-beauty/difsr``).

They travel inside the package, so an installed tfsidefuse runs the demo and every paper setting by name::

    tfsidefuse run --config demo/sasrec
    tfsidefuse presets                              # list them
    tfsidefuse presets --copy demo/sasrec my.yaml   # a copy to edit

In Python, :func:`tfsidefuse.config.load_config` takes a preset name wherever it takes a path. Paths inside a
preset (``dataset.path``, ``prepared_dir``, ``run_dir``) are relative to the current directory; the real-data
presets read ``../shared/data/<dataset>``: point ``dataset.path`` at your copy (``--set dataset.path=...``).
"""

from __future__ import annotations

import os
import shutil

PRESETS_DIR = os.path.dirname(os.path.abspath(__file__))


def preset_names() -> list[str]:
    """Every preset name, ``<dataset>/<model>``, sorted."""
    names = []
    for dataset in sorted(os.listdir(PRESETS_DIR)):
        folder = os.path.join(PRESETS_DIR, dataset)
        if os.path.isdir(folder) and not dataset.startswith(("_", ".")):
            names += [f"{dataset}/{n[:-5]}" for n in sorted(os.listdir(folder)) if n.endswith(".yaml")]
    return names


def preset_path(name: str) -> str | None:
    """The YAML file of a preset name (``demo/sasrec``, with or without ``.yaml``), or None if there is none."""
    name = name[:-5] if name.endswith(".yaml") else name
    if name.count("/") != 1 or ".." in name:
        return None
    path = os.path.join(PRESETS_DIR, *name.split("/")) + ".yaml"
    return path if os.path.isfile(path) else None


def copy_preset(name: str, destination: str) -> str:
    """Copies a preset's YAML file to ``destination`` (never over an existing file) and returns the path."""
    from tfsidefuse.errors import ConfigError

    source = preset_path(name)
    if source is None:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    if os.path.exists(destination):
        raise ConfigError(f"{destination} exists; choose another file name")
    shutil.copyfile(source, destination)
    return destination

"""A ``cli.py data ACTION NAME`` step (prepare, download, cache) and the options it declares.

A dataset owns its steps: each is a function and a frozen ``Options`` dataclass whose fields are the
step's ``key=value`` arguments (``csd_dir=DIR out=FILE``), so cli.py defines no dataset's flags and a
dataset registered elsewhere brings its own. A field without a default is required; its ``help`` and
``metavar`` (see ``option``) are what ``cli.py data --help`` prints. Keys of the dataset's ``data.*``
settings may be given bare as well (``seq_len=50`` is ``data.seq_len=50``): the step reads them from
the settings it is handed, so one value has one name.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields

from mmsent.checks import ConfigError


def option(help: str, metavar: str = "PATH", default=MISSING):
    """A step's option: no default means required. Values stay the text the user typed (paths are
    never read as YAML: a folder named ``123`` or ``yes`` is a folder)."""
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class Job:
    run: Callable  # (dataset name, options, the dataset's settings, progress(done, total)) -> message
    Options: type  # frozen dataclass of ``option`` fields

    def usage(self) -> str:
        """``csd_dir=DIR out=FILE [folds=...]``: required options first."""
        return " ".join(f"{f.name}={f.metadata['metavar']}" if f.default is MISSING
                        else f"[{f.name}={f.metadata['metavar']}]" for f in fields(self.Options))

    def help(self) -> list[str]:
        return [f"{f.name}={f.metadata['metavar']}: {f.metadata['help']}" for f in fields(self.Options)]

    def split(self, what: str, texts, settings_keys) -> tuple[object, list[tuple[str, str]]]:
        """``key=value`` texts -> (the step's options, config overrides). A bare key is the step's
        option or, failing that, one of the dataset's ``data.*`` settings; a dotted key is a config
        override as everywhere else. Anything else names what is valid."""
        own = [f.name for f in fields(self.Options)]  # in declaration order, for the message
        given, overrides = {}, []
        for text in texts:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise ConfigError(f"{what}: {text!r} must look like key=value ({self.usage()})")
            if key in own:
                given[key] = value
            elif key in settings_keys:
                overrides.append(f"data.{key}={value}")
            elif "." in key:
                overrides.append(text)
            else:
                valid = ", ".join([*own, *sorted(settings_keys)])
                raise ConfigError(f"{what}: unknown option {key!r}; valid: {valid} (or a dotted config key)")
        missing = [f for f in fields(self.Options) if f.default is MISSING and not given.get(f.name)]
        if missing:
            raise ConfigError(f"{what} needs " + " ".join(f"{f.name}={f.metadata['metavar']}" for f in missing)
                              + f" ({'; '.join(f.name + ': ' + f.metadata['help'] for f in missing)})")
        return self.Options(**given), overrides

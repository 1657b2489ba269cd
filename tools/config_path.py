"""Count the path a training config takes through the code (issue #26, "the seams").

Runs a tiny ``cxrguide train`` in this process, Stage I and then Stage II ``--from`` its
leaderboard, on a tiny synthetic prepared folder (random bodies, 32 px, one epoch), under
``sys.setprofile``. Every call of a function in a ``cxrguide.*`` module that receives a
:class:`~cxrguide.config.TrainConfig` (the command's object or any ``dataclasses.replace`` of it:
matched by type) among its arguments is one step of the path; the config's own methods
(``__init__``/``__post_init__`` behind ``dataclasses.replace``) are not. Printed:

- ``modules``: the distinct modules those calls are in;
- ``stays``: the runs of consecutive calls in one module;
- ``climbs back``: stays in a module the path had already left (``stays - modules``).

Fewer modules and fewer climbs back mean a config that is easier to follow. Run it from the
repository root with the package importable: ``PYTHONPATH=src python tools/config_path.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import sys
import tempfile
from pathlib import Path

from cxrguide.cli import main as cxrguide_main
from cxrguide.config import TrainConfig

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from cxr_testutils import make_prepared  # noqa: E402  (the tests' tiny prepared folder)


@dataclasses.dataclass(frozen=True)
class ConfigPath:
    """The modules a config was handed to, in call order, one entry per stay."""

    stays: tuple[str, ...]

    @property
    def modules(self) -> list[str]:
        return sorted(set(self.stays))

    @property
    def climbs_back(self) -> int:
        return len(self.stays) - len(set(self.stays))


def _holds(value: object, kind: type) -> bool:
    if isinstance(value, kind):
        return True
    if isinstance(value, tuple | list):
        return any(isinstance(v, kind) for v in value)
    if isinstance(value, dict):
        return any(isinstance(v, kind) for v in value.values())
    return False


def _argument_names(code) -> tuple[str, ...]:
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return code.co_varnames[:n]


def trace(argvs: list[list[str]]) -> ConfigPath:
    """Run ``cxrguide`` once per argument list under the profiler; the config's path."""
    stays: list[str] = []

    def profile(frame, event, _arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("cxrguide."):
            return
        local = frame.f_locals
        if isinstance(local.get("self"), TrainConfig):  # the config building itself: no step
            return
        names = _argument_names(frame.f_code)
        if any(_holds(local.get(a), TrainConfig) for a in names) and stays[-1:] != [module]:
            stays.append(module)

    for argv in argvs:
        sys.setprofile(profile)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                code = cxrguide_main(argv)
        finally:
            sys.setprofile(None)
        if code != 0:
            raise SystemExit(f"cxrguide {' '.join(argv)}: exit {code}")
    return ConfigPath(tuple(stays))


def tiny_train_path(work: Path) -> ConfigPath:
    """Stage I then Stage II ``--from`` its leaderboard, on a tiny prepared folder in ``work``."""
    prep = make_prepared(work / "prep", size=32)
    runs = work / "runs"
    common = ["--weights", "none", "--image-size", "32", "--max-epochs", "1"]
    common += ["--batch-size", "8", "--no-progress", "--out", str(runs)]
    stage1 = ["train", "--stage", "1", "--data", str(prep), "--backbone", "mobilenet_v2"]
    stage2 = ["train", "--stage", "2", "--from", str(runs / "leaderboard_stage1.csv")]
    return trace([stage1 + common, stage2 + common])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every stay in order")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="config-path-") as tmp:
        path = tiny_train_path(Path(tmp))
    if args.list:
        print("\n".join(path.stays))
    print(f"modules {len(path.modules)}")
    print("\n".join(f"  {m}" for m in path.modules))
    print(f"stays {len(path.stays)}")
    print(f"climbs back {path.climbs_back}")


if __name__ == "__main__":
    main()

"""What every command shares: absl flags in, one-line errors out, and the flag groups several use.

A command module (`python -m lima_jax.X`) defines its flags at import (`flags.DEFINE_*` or a
`define_*_flags()` group below), reads them in `main`, and calls libraries with explicit arguments;
nothing imports a command module, so no flag is defined twice. This module imports no JAX and no
config, so `--help` and bad input answer in well under a second: a bad flag or override is one line
and exit 2, a LimaError from the run too, any other failure exit 1 (`--verbose` adds the traceback).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import logging as std_logging
import re
import sys
import traceback
from typing import Any, Callable, Iterator, NoReturn

from absl import app, flags, logging
import ml_collections
from ml_collections.config_flags import config_flags

from lima_jax.storage import compile_cache
from lima_jax.errors import LimaError, run_main
from lima_jax.inference.sampling_params import SamplingParams

flags.DEFINE_bool("verbose", False, "print tracebacks with errors")
flags.DEFINE_string("compilation_cache", None, "where JAX keeps compiled programs for the next run, or `off` (default: "
                    "$JAX_COMPILATION_CACHE_DIR, a pod run's WORKDIR/compilation_cache, else ~/.cache/lima_jax/jax)")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        if any(a.startswith("--config") or a.startswith("--grid") for a in argv[1:]):
            for name in CONFIG_FLAGS or ["config"]:
                check_overrides(argv, name)
        rest = flags.FLAGS(argv)
    except (flags.Error, LimaError) as e:
        print(f"error: {describe_flag_error(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (SystemExit, BrokenPipeError):  # absl's --help, --helpfull and --helpxml print and exit 1
        _exit_after_help()
    if not flags.FLAGS["verbosity"].present:  # Orbax and JAX log every step at INFO; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.verbose:  # gcsfs logs each gs:// request it gives up on, traceback and all, then raises
        std_logging.getLogger("gcsfs").setLevel(std_logging.CRITICAL)  # what it raises is the one line we print
        for logger in (logging.get_absl_logger(), std_logging.getLogger("asyncio")):  # asyncio: "Task exception was never retrieved"
            logger.addFilter(_failures_raised_later)
        sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)
    compile_cache.use(flags.FLAGS.compilation_cache)  # before the command imports JAX
    return rest


CONFIG_FLAGS: dict[str, Callable[[str], str]] = {}  # the config-file flags defined, each with how it finds a file


def define_config_flag(name: str = "config", default: str | None = None, help_string: str = "",
                       resolve: Callable[[str], str] | None = None) -> flags.FlagHolder:
    """Like `config_flags.DEFINE_config_file`, but `--config=65b` picks configs/65b.py by name
    (`resolve`: how a name becomes a file; `ablate --grid` looks in configs/ablations/).

    Each entry point defines it; a process that imports several (tests) shares the first.
    """
    from lima_jax.config import ConfigFileParser, available_configs, resolve_config_path  # imports the model: only for commands with a config

    resolve = resolve or resolve_config_path
    if name in flags.FLAGS:
        return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
    CONFIG_FLAGS[name] = resolve
    flag = config_flags._ConfigFlag(  # noqa: SLF001 - the public helper hard-wires its parser
        parser=ConfigFileParser(name=name, lock_config=True, resolve=resolve),
        serializer=flags.ArgumentSerializer(),
        name=name,
        default=default,
        help_string=help_string or f"a config name ({', '.join(available_configs())}) or a .py file; override keys with --{name}.a.b=value",
        flag_values=flags.FLAGS,
        accept_new_attributes=False,
    )
    return flags.DEFINE_flag(flag, flags.FLAGS)


def check_overrides(argv: list[str], name: str = "config") -> None:
    """Checks every `--NAME.a.b=value` against the keys of the config that `--NAME` loads, so an
    unknown key is named in one line (ml_collections raises a multi-line AttributeError)."""
    spec = None  # the last --NAME=SPEC or --NAME SPEC, as absl reads it
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            spec = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            spec = argv[i + 1]
    from lima_jax.config import override_keys, resolve_config_path  # imports the model: only for commands with a config

    keys = override_keys(argv, name)
    if not keys:
        return
    if spec is None:
        raise LimaError(f"--{name}.{keys[0]} overrides a key, but no --{name}=NAME was given")
    resolve = CONFIG_FLAGS.get(name, resolve_config_path)
    config = config_flags.ConfigFileFlagParser(name=name).parse(resolve(spec))  # LimaError names an unknown config
    for dotted in keys:
        node = config
        for i, part in enumerate(dotted.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(dotted.split(".")[:i]) or "the top level"
                choices = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                raise LimaError(f"--{name}.{dotted}: unknown config key {part!r} in {where} (known: {choices})")
            node = node[part]


def _exit_after_help() -> NoReturn:
    """Asking for help is no failure: exit 0, also when its reader stopped early (`--help | head`)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is left unflushed goes nowhere at exit
    sys.exit(0)


def _failures_raised_later(record: std_logging.LogRecord) -> bool:
    """Orbax logs a failed background save with its traceback from each of its threads (5 copies for a
    full disk), then raises it where the run waits for the save: the one line we print says it. The
    same failure reaches asyncio through TensorStore's futures, raised in native code (no Python frame,
    a status-coded message such as `RESOURCE_EXHAUSTED: ...`): that report is dropped too."""
    if not record.exc_info or record.levelno < std_logging.ERROR:
        return True
    frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info[2] is not None else []
    if "/orbax/" in record.pathname or any("/orbax/" in frame.filename for frame in frames):
        return False
    return not (not frames and _TENSORSTORE_STATUS.match(str(record.exc_info[1])))


# absl status codes, which prefix TensorStore's error messages.
_TENSORSTORE_STATUS = re.compile(r"(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
                                 r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
                                 r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED): ")


def _quiet_unraisablehook(hook: Callable[..., Any]) -> Callable[..., Any]:
    """After a failed save, TensorStore's callbacks still post to Orbax's closed event loop and print
    "RuntimeError: Event loop is closed" with a traceback: noise beside the error that matters."""

    def unraisablehook(unraisable) -> None:
        value = unraisable.exc_value
        if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
            hook(unraisable)

    return unraisablehook


def describe_flag_error(message: str) -> str:
    """absl's multi-line flag-parsing errors, shortened to the line that names the problem."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"(config|key|field|type|override|flag)", line, re.I):
            return line
    return lines[-1] if lines else str(message)


@contextlib.contextmanager
def stdout_for_results() -> Iterator[None]:
    """While it lasts, whatever libraries write to file descriptor 1 (gloo's "[Gloo] Rank 0 is connected
    to 1 peer ranks" as CPU processes connect) goes to stderr: stdout carries only a command's results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def no_arguments(argv: list[str]) -> None:
    """Commands take flags only: a stray word (a flag missing its `--`) is an error, not ignored."""
    if len(argv) > 1:
        raise LimaError(f"unexpected arguments: {' '.join(argv[1:])}")


def check_exists(path: str, what: str) -> None:
    """A path the user named that does not exist, told in one line before the command imports JAX
    (the library that reads it would say the same, seconds later)."""
    from lima_jax.storage.paths import user_path

    if not user_path(path).exists():
        raise LimaError(f"{what} {user_path(path)}: no such file or directory")


def run(main: Callable[[list[str]], None]) -> NoReturn:
    """`app.run(main)` with the project's error conventions."""
    _list_in_help()
    app.run(lambda argv: run_main(main, argv, verbose=flags.FLAGS.verbose), flags_parser=_parse_flags)


def _list_in_help() -> None:
    """absl's --help lists the main module's key flags only; the flags a command takes through lima_jax's
    shared groups (the sampling flags here, `--config`, the judge's) are its own too. Libraries define no
    flags, so the lima_jax flags this process defined are the command's."""
    main = sys.argv[0]  # absl's name for the module run as __main__
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if module.startswith("lima_jax."):
            for flag in defined:
                flags.FLAGS.register_key_flag_for_module(main, flag)


@dataclasses.dataclass(frozen=True)
class SamplingFlags:
    """LIMA's sampling knobs as flags (sample, chat, evaluate.generate, evaluate.select)."""

    temperature: flags.FlagHolder
    top_p: flags.FlagHolder
    repetition_penalty: flags.FlagHolder
    max_new_tokens: flags.FlagHolder
    seed: flags.FlagHolder

    def params(self) -> SamplingParams:
        """The sampler's settings (an `inference.sampling_params.SamplingParams`, without the seed), checked:
        a bad one is one line naming its flag (`--top_p`)."""
        names = [f.name for f in dataclasses.fields(self) if f.name != "seed"]
        params = SamplingParams(**{name: getattr(self, name).value for name in names})
        params.check({name: f"--{name}" for name in names})
        return params


def define_sampling_flags() -> SamplingFlags:
    return SamplingFlags(
        temperature=flags.DEFINE_float("temperature", 0.7, "0 decodes greedily"),
        top_p=flags.DEFINE_float("top_p", 0.9, "nucleus sampling: the probability mass kept"),
        repetition_penalty=flags.DEFINE_float("repetition_penalty", 1.2, "CTRL-style penalty on tokens already generated (1 = off)"),
        max_new_tokens=flags.DEFINE_integer("max_new_tokens", 2048, "how many tokens to generate at most"),
        seed=flags.DEFINE_integer("seed", 0, "sampling seed: the same seed gives the same text"),
    )


def define_mesh_flag() -> flags.FlagHolder:
    """`--mesh` of the sampling commands (`inference.generator.parse_mesh` reads it)."""
    return flags.DEFINE_string("mesh", "", "weights and KV cache over every process's devices, e.g. fsdp=4,tensor=2 "
                               "(one size may be -1: the rest of the devices); empty: one device")


def define_dtype_flag() -> flags.FlagHolder:
    """`--dtype` of the commands that load a model to generate (`inference.generator.in_dtype` reads it)."""
    return flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "the weights, the KV cache and the "
                             "compute in this dtype (logits, softmax and sampling stay float32); auto: as the "
                             "checkpoint (or --config) says")


@dataclasses.dataclass(frozen=True)
class DistributedFlags:
    """JAX's multi-controller runtime as flags (train, sample, evaluate.generate, evaluate.select): every
    host runs the same command; TPU pods and SLURM are found by themselves, GPU nodes name process 0."""

    coordinator_address: flags.FlagHolder
    num_processes: flags.FlagHolder
    process_id: flags.FlagHolder
    distributed: flags.FlagHolder

    @property
    def _explicit(self) -> bool:
        """Whether the flags name the other processes (else a cluster manager may)."""
        return bool(self.coordinator_address.value or self.distributed.value)

    @property
    def joins_others(self) -> bool:
        """Whether `start` will join other processes (known before JAX is imported)."""
        return self._explicit or (self.distributed.value is None and launched_on_cluster())

    def start(self, *, shutdown_timeout_s: int | None = None) -> bool:
        """Joins the other processes, if there are any (and only then imports JAX); whether it did.
        `shutdown_timeout_s`: how long a process that is done waits at exit for the others (JAX's
        default, 300 s, when None)."""
        if not self.joins_others:
            return False
        from lima_jax import sharding

        given = (self.coordinator_address.value, self.num_processes.value, self.process_id.value)
        sharding.initialize_distributed(*(given if self._explicit else (None, None, None)), shutdown_timeout_s=shutdown_timeout_s)
        return True


def launched_on_cluster() -> bool:
    """Whether this process is one of several that a cluster manager started (SLURM, a TPU pod)."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def define_distributed_flags() -> DistributedFlags:
    return DistributedFlags(
        coordinator_address=flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-node GPU runs"),
        num_processes=flags.DEFINE_integer("num_processes", None, "the number of processes (hosts), with --coordinator_address"),
        process_id=flags.DEFINE_integer("process_id", None, "this process's index, with --coordinator_address"),
        distributed=flags.DEFINE_bool("distributed", None, "initialise JAX's multi-controller runtime (default: on TPU pods and under SLURM)"),
    )

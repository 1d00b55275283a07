"""ghn-predict: predict the parameters of a model and write them to safetensors.

Examples:
    ghn-predict --model timm:resnet18 --model-kwargs '{"num_classes": 10, "in_chans": 1}' --out resnet18.safetensors
    ghn-predict --model torchvision:resnet50 --input-shape 3,224,224 --out r50.safetensors
    ghn-predict --model hf:gpt2 --model-kwargs '{"n_layer": 2, "vocab_size": 256}' --seq-len 32 --out gpt2.safetensors
    ghn-predict --model hf:t5 --out t5.safetensors               # any transformers model type
    ghn-predict --model hf:gpt2-large --meta --out gpt2-large.safetensors --max-shard-size 1GB
    ghn-predict --model hf:path/to/config.json --meta --out big.safetensors
    ghn-predict --model hf:whisper --input-shape 80,3000 --out whisper.safetensors   # speech features (mel x time)

Without --ghn, the shipped predictor of the model's task is used (ghn-fortunes for language models, ghn-fmnist
for image models) and the first output line says which.

The output holds the model's parameters only (tied ones once): load it with load_state_dict(..., strict=False), or
pass --buffers to add the persistent buffers (BatchNorm running statistics, at their initial values) so that a
strict load works.

Exit status: 0 on success, 1 on an error (one line on stderr, nothing written), 2 on a bad flag, 130 on Ctrl-C
(at any moment, the first seconds of importing torch included: one line on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import ConfigError, GHNError, OutputError

if TYPE_CHECKING:  # torch is imported in main(), once Ctrl-C is handled (this module loads without it)
    import torch
    import torch.nn as nn

__all__ = ["main", "save_sharded", "OutputFiles", "pick_predictor", "example_inputs"]

logger = logging.getLogger("ghn")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks, shows every default that is a value, never breaks a name at a hyphen."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "(default:" in text:
            return text
        return text + " (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ghn-predict", description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="Examples:" + __doc__.split("Examples:")[1], formatter_class=_Formatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="timm:<name>, torchvision:<name>, or hf:<transformers model type (gpt2, bert, t5, vit, ...), "
                        "Hub name in the local HF cache, or path to a config.json / directory>")
    g.add_argument("--model-kwargs", default="{}",
                   help="JSON object passed to the model constructor (timm, torchvision) or config (hf)")
    g.add_argument("--input-shape", default=None, type=_shape,
                   help="example input shape without the batch dimension, e.g. 3,224,224; token ids of this shape "
                        "(e.g. 16) for a language model (one whose input feeds an embedding: ghn.model_task), else "
                        "floats; a transformers model's main input (Whisper's input_features: 80,3000), encoder-"
                        "decoders also get decoder_input_ids (default: what the model declares)")
    g.add_argument("--seq-len", default=None, type=_positive_int,
                   help="trace a language model on token ids of this length (same as --input-shape N)")
    g.add_argument("--meta", action="store_true",
                   help="build the model on the meta device (no weight memory) and stream predictions: for big models")
    g = p.add_argument_group("predictor")
    g.add_argument("--ghn", default=None,
                   help="shipped predictor name (ghn-fmnist, ghn-fortunes), GHN directory, training run directory or "
                        "Hub repo id (default: the shipped predictor of the model's task: ghn-fortunes for language "
                        "models, ghn-fmnist otherwise)")
    g.add_argument("--device", default="cpu", help="device of the GHN and of a --meta model (cpu, cuda, cuda:1, ...)")
    g.add_argument("--classifier", choices=("predict", "reinit"), default="predict",
                   help="keep the predicted classifier / LM head, or re-initialise it (other number of classes)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True,
                   help="output .safetensors file of the model's parameters (not BatchNorm running statistics or "
                        "other buffers: load it with load_state_dict(..., strict=False), or pass --buffers); big "
                        "models get shards <stem>-00001-of-0000N.safetensors + an index")
    g.add_argument("--buffers", action="store_true",
                   help="also write the model's persistent buffers (BatchNorm running statistics, at their initial "
                        "values), so that a strict load_state_dict works")
    g.add_argument("--max-shard-size", default="5GB", type=_size, help="largest shard (e.g. 500MB, 5GB)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the summary and errors")
    g.add_argument("-v", "--verbose", action="store_true", help="also log what ghn does (INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``ghn-predict``; returns the exit status (see the module docstring)."""
    output = None
    try:
        with _exit_on_interrupt():
            args = build_parser().parse_args(argv)
            _import_libraries(args.model)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(message)s")
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            output = OutputFiles(Path(args.out))  # checked (and its temporary directory made) before any work
            progress = _Progress(quiet=args.quiet)
            try:
                with output:
                    _run(args, output, progress)
            finally:
                progress.close()
        return 0
    except GHNError as e:
        print(f"ghn-predict: error: {cli_terms(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_INTERRUPTED if output is None or not output.moved else
              "ghn-predict: interrupted while moving files into place; the output is incomplete", file=sys.stderr)
        return 130


_INTERRUPTED = "ghn-predict: interrupted; no output written"


@contextlib.contextmanager
def _exit_on_interrupt() -> Iterator[None]:
    """Within this block Ctrl-C exits at once (130, one line on stderr) instead of raising KeyboardInterrupt.

    For the first seconds, while torch and the model library are imported: a KeyboardInterrupt there prints a
    traceback from deep inside an import, or leaves a half-imported module that fails later with an ImportError.
    Nothing has been written yet, so there is nothing to clean up.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _exit_interrupted(signum: int, frame: Any) -> None:
    os.write(sys.stderr.fileno(), (_INTERRUPTED + "\n").encode())
    os._exit(130)


def _import_libraries(model: str) -> None:
    """Import what the run needs (torch, the GHN, the library of ``--model``'s source): the slow part of starting."""
    from . import domain, hypernet, sources  # noqa: F401 - torch and the GHN
    library = sources.LIBRARIES.get(model.partition(":")[0])
    if library is not None:
        importlib.import_module(library)


def _run(args: argparse.Namespace, output: OutputFiles, progress: _Progress) -> None:
    from .domain import graph_for
    from .prediction import resolve_device
    from .sources import load_model
    kwargs = _model_kwargs(args.model_kwargs)
    if args.seq_len is not None and args.input_shape is not None:
        raise ConfigError("give --input-shape or --seq-len, not both (--seq-len N is --input-shape N for token ids)")
    resolve_device(args.device)  # a bad --device fails now, not after building the model
    ghn = _load_ghn(args.ghn, args.device, progress) if args.ghn is not None else None
    progress(f"building {args.model}{' on the meta device' if args.meta else ''}")
    t0 = time.perf_counter()
    model = load_model(args.model, kwargs, meta=args.meta)
    n_params = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    shape = (args.seq_len,) if args.seq_len is not None else args.input_shape
    example = example_inputs(model, shape, from_seq_len=args.seq_len is not None)
    if ghn is None:
        name, why = pick_predictor(model, example)
        ghn = _load_ghn(name, args.device, progress, why)
    progress(f"tracing {type(model).__name__} ({n_params:,} parameters)")
    graph, example = graph_for(ghn.config, model, example, ghn.config.max_hops)
    progress(f"predicting {len(graph.param_names):,} tensors from a graph of {len(graph):,} nodes")
    model = ghn.predict(model, example, graph=graph, classifier=args.classifier, device=args.device)
    t2 = time.perf_counter()
    files = output.write(model, args.max_shard_size, progress, buffers=args.buffers)
    t3 = time.perf_counter()
    print(f"model: {args.model} ({type(model).__name__}, {n_params:,} parameters) built in {t1 - t0:.2f}s")
    print(f"predicted in {t2 - t1:.2f}s (graph build included): {graph.coverage}")
    print(f"wrote {', '.join(str(f) for f in files)} in {t3 - t2:.2f}s")


def _load_ghn(name: str, device: str, progress: _Progress, why: str = "") -> Any:
    from .hypernet import GHN
    progress(f"loading GHN {name}")
    ghn = GHN.from_pretrained(_ghn_location(name), device=device)
    print(f"GHN: {name}{why} ({sum(p.numel() for p in ghn.parameters()):,} parameters, "
          f"{'trained' if ghn.config.trained else 'UNTRAINED: predictions are a structured random init'})")
    return ghn


def pick_predictor(model: nn.Module, example: Any = None) -> tuple[str, str]:
    """The shipped predictor for ``model``'s task (``ghn.domain.model_task``: language model or image model; image
    when it cannot be told) and the words saying why, e.g. ``("ghn-fortunes", " (picked for a language model ...)")``.
    """
    from .domain import SHIPPED_PREDICTORS, model_task
    task = model_task(model, example)
    name = Path(SHIPPED_PREDICTORS[task or "image"]).name
    what = {"lm": "a language model", "image": "an image model"}.get(task, "a model of unknown task")
    return name, f" (picked for {what}; --ghn chooses another)"


def _model_kwargs(text: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-kwargs is not valid JSON ({e}); e.g. --model-kwargs '{{\"num_classes\": 10}}'")
    if not isinstance(kwargs, dict):
        raise ConfigError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return kwargs


def _ghn_location(name: str) -> str:
    """A training run directory (with ``latest.json``) means its newest checkpoint; anything else is unchanged."""
    latest = Path(name) / "latest.json"
    if latest.is_file():
        try:
            return str(Path(name) / json.loads(latest.read_text())["dir"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--ghn {name}: {latest} is not a valid pointer to a checkpoint ({e})") from None
    return name


# ---- example inputs ----------------------------------------------------------------------------------------------
def example_inputs(model: nn.Module, shape: tuple[int, ...] | None, from_seq_len: bool = False) -> Any:
    """Inputs of ``shape`` (``--input-shape``; batch 2 prepended) for tracing; ``None`` when no shape is given (the
    model's own).

    Token ids for a model that reads them (:func:`ghn.domain.model_task` says ``"lm"``, the same rule that picks
    the predictor), floats of the model's dtype otherwise; see :func:`ghn.inputs.inputs_of_shape` (transformers
    models get them by keyword, encoder-decoders also ``decoder_input_ids``).

    Raises:
        ConfigError: ``from_seq_len`` (the shape came from ``--seq-len``) for a model that does not read token ids.
    """
    from .domain import model_task
    from .inputs import inputs_of_shape
    if shape is None:
        return None
    task = model_task(model)
    if from_seq_len and task != "lm":
        what = "an image model" if task == "image" else "not a model whose input feeds an nn.Embedding"
        raise ConfigError(f"--seq-len needs a model that takes token ids, but {type(model).__name__} is {what}; "
                          "give --input-shape (e.g. 3,224,224) instead")
    return inputs_of_shape(model, shape, token_ids=task == "lm")


# ---- messages ----------------------------------------------------------------------------------------------------
# The library's errors speak Python (example_inputs=..., device='cpu'); on the command line the same advice is a flag.
_CLI_TERMS: tuple[tuple[re.Pattern, Any], ...] = tuple((re.compile(p), r) for p, r in (
    (r"leave example_inputs=None to use it", "omit --input-shape to use it"),
    (r"example_inputs of shape \(B, ([\d, ]+)\)", lambda m: "--input-shape " + m[1].replace(" ", "")),
    (r"[Pp]ass example_inputs=\.\.\., e\.g\. .*? for a language model",
     "pass --input-shape, e.g. 3,224,224 for an image model, or --seq-len 16 for a language model"),
    (r"[Pp]ass example_inputs=\.\.\. that the model's forward\(\) accepts",
     "Pass an --input-shape (or --seq-len for token ids) that the model's forward() accepts"),
    (r"example_inputs=\.\.\.(?: \(a dict of keyword tensors\))?",
     "inputs the command line cannot describe (use the Python API: ghn.predict(model, example_inputs=...))"),
    (r"\bdevice='([^']*)'", r"--device \1"),
    (r"\bclassifier='(\w+)'", r"--classifier \1"),
))


def cli_terms(message: str) -> str:
    """``message`` with API advice (``example_inputs=...``, ``device='cpu'``) said with the CLI's flags."""
    for pattern, replacement in _CLI_TERMS:
        message = pattern.sub(replacement, message)
    return message


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"ghn-predict: warning: {cli_terms(str(message))}", file=sys.stderr)


class _Progress:
    """Progress lines with the time since start (stdout, flushed), so a long run is never silent.

    Each call starts a step; a step that runs longer than ``every`` seconds (predicting or writing a big model)
    gets a ``still <step>`` line every ``every`` seconds from a background thread, until the next step or ``close``.
    """

    def __init__(self, quiet: bool = False, every: float = 15.0):
        self.quiet, self.every = quiet, every
        self.t0 = time.perf_counter()
        self.step = ""
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        with self.lock:
            self.step, self.since = message, time.perf_counter()
            self._print(f"{message} ...")
        if self.thread is None:
            self.thread = threading.Thread(target=self._heartbeat, daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

    def _heartbeat(self) -> None:
        while not self.done.wait(self.every / 3):
            with self.lock:
                if time.perf_counter() - self.since >= self.every:
                    self.since = time.perf_counter()
                    self._print(f"  still {self.step}")

    def _print(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {text}", flush=True)


# ---- output ------------------------------------------------------------------------------------------------------
class OutputFiles:
    """The files of one run: checked before any work, written to a hidden directory, moved into place when complete.

    ``out`` names a ``.safetensors`` file; a model bigger than the shard size becomes ``<stem>-00001-of-0000N<suffix>``
    shards plus ``<out>.index.json``. Shards and index of an earlier run with another shard count are removed when
    the new files are moved in, so the index never points at stale files. Used as a context manager: any exception,
    Ctrl-C included, removes the temporary directory and leaves the destination as it was.

    Raises:
        OutputError: ``out`` does not end in ``.safetensors`` (``model.pt`` would promise a pickle that
            ``torch.load`` cannot read), is a directory, its directory is missing or not writable.
    """

    def __init__(self, out: Path):
        self.out = out
        self.moved = False
        if out.is_dir():
            raise OutputError(f"--out {out} is a directory; pass a file name, e.g. {out / 'model.safetensors'}")
        if out.suffix != ".safetensors":
            raise OutputError(f"--out {out}: ghn-predict writes safetensors (torch.load cannot read them), so the "
                              f"name must end in .safetensors, e.g. --out {out.with_suffix('.safetensors')}; read "
                              "it with safetensors.torch.load_file")
        parent = out.parent
        if not parent.is_dir():
            raise OutputError(f"--out {out}: directory {parent} does not exist; create it first")
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
        except OSError as e:
            raise OutputError(f"--out {out}: cannot write to {parent} ({e.strerror or e}); choose a writable "
                              "directory") from None

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, model: nn.Module, max_shard_bytes: int, progress=lambda message: None,
              buffers: bool = False) -> list[Path]:
        """Write the model's parameters (canonical names: tied weights once), and its persistent buffers if
        ``buffers`` (what ``state_dict`` holds besides parameters), and move them into place."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file
        tensors = list(model.named_parameters())
        if buffers:
            persistent = model.state_dict().keys()
            tensors += [(n, b) for n, b in model.named_buffers() if n in persistent]
        shards = _shards(tensors, max_shard_bytes)
        names = _shard_names(self.out, len(shards))
        try:
            for i, (name, shard) in enumerate(zip(names, shards)):
                size = sum(p.numel() * p.element_size() for _, p in shard)
                progress(f"writing {name} ({size / 1e6:,.0f} MB{f', shard {i + 1}/{len(shards)}' if len(shards) > 1 else ''})")
                save_file({n: p.detach().contiguous().cpu() for n, p in shard}, str(self.tmp / name),
                          metadata={"format": "pt"})
            if len(shards) > 1:
                index = {"metadata": {"total_size": sum(p.numel() * p.element_size() for s in shards for _, p in s)},
                         "weight_map": {n: names[i] for i, s in enumerate(shards) for n, _ in s}}
                names.append(self.out.name + ".index.json")
                (self.tmp / names[-1]).write_text(json.dumps(index, indent=2))
            mode = 0o666 & ~_umask()  # what open() gives an ordinary file (and save_pretrained's files)
            for name in names:
                os.chmod(self.tmp / name, mode)
            return self._move_into_place(names)
        except (OSError, SafetensorError) as e:
            raise OutputError(f"could not write {self.out} ({getattr(e, 'strerror', None) or e}); nothing was "
                              "written") from None

    def _move_into_place(self, names: list[str]) -> list[Path]:
        dest = self.out.parent
        index = self.out.name + ".index.json"
        stem, suffix = self.out.stem, self.out.suffix
        shard = re.compile(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}{re.escape(suffix)}")
        stale = [p for p in dest.iterdir() if p.name not in names and (p.name in (self.out.name, index) or
                                                                        shard.fullmatch(p.name))]
        self.moved = True
        # the old index goes first: at no moment does an index name shards that are gone or from another run
        for p in sorted(stale, key=lambda p: p.name != index):
            p.unlink()
        for name in sorted(names, key=lambda n: n == index):  # the new index last, once its shards are there
            os.replace(self.tmp / name, dest / name)
        return [dest / name for name in names]


def save_sharded(model: nn.Module, out: Path, max_shard_bytes: int, buffers: bool = False) -> list[Path]:
    """Write the model's parameters (and persistent buffers if ``buffers``) to ``out`` (shards + index if bigger
    than ``max_shard_bytes``); see :class:`OutputFiles`. Returns the paths written.

    Raises:
        OutputError: the destination cannot be written (nothing is left behind).
    """
    with OutputFiles(Path(out)) as files:
        return files.write(model, max_shard_bytes, buffers=buffers)


def _shards(named: list[tuple[str, torch.Tensor]], max_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most ``max_bytes`` (a single bigger tensor gets a shard of its own)."""
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, p in named:
        nbytes = p.numel() * p.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, p))
        size += nbytes
    return shards


def _shard_names(out: Path, n: int) -> list[str]:
    if n == 1:
        return [out.name]
    return [f"{out.stem}-{i + 1:05d}-of-{n:05d}{out.suffix}" for i in range(n)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- argparse types ----------------------------------------------------------------------------------------------
def _size(text: str) -> int:
    """argparse type: ``5GB``, ``100MB``, ``2048`` → bytes."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    t = text.strip().upper()
    try:
        for unit, factor in units.items():
            if t.endswith(unit):
                value = int(float(t[:-len(unit)]) * factor)
                break
        else:
            value = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 500MB or 5GB") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the shard size must be positive, e.g. 500MB")
    return value


def _shape(text: str) -> tuple[int, ...]:
    """argparse type: ``3,224,224`` → (3, 224, 224)."""
    try:
        dims = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; use comma-separated sizes, e.g. 3,224,224") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive, e.g. 3,224,224")
    return dims


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer, e.g. 16")
    return value


if __name__ == "__main__":
    sys.exit(main())

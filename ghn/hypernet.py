"""``GHN``: the graph hypernetwork (graph encoder + low-rank decoder), prediction and Hub I/O."""
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from .binding import CoverageReport
from .config import GHNConfig
from .decoder import LowRankDecoder, graph_queries
from .domain import graph_for, warn_domain
from .errors import CheckpointError, ConfigError, DeviceError, GHNError, UnverifiedWeightsWarning
from .graph import Graph
from .inputs import ExampleInputs
from .model_checks import check_model
from .nn import GraphEncoder, collate
from .parametrized import write_through
from .prediction import (Prediction, branch_end_params, check_graph, check_prediction, classifier_modules,
                         materialize, padding_rows, recalibrate_bn, reinit_classifier, resolve_device,
                         scale_branch_ends, write_params)

__all__ = ["GHN", "CoverageWarning"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKSUM_KEY = "checksum"  # in config.json: "sha256:<hex digest of model.safetensors>"


class CoverageWarning(UserWarning):
    """Some parameters of the model were not predicted (see ``Prediction.coverage``)."""


class GHN(nn.Module, PyTorchModelHubMixin, library_name="ghn", tags=["graph-hypernetwork", "parameter-prediction"],
          repo_url="https://github.com/ghn-org/ghn", license="mit"):
    """A LoGAH-style graph hypernetwork that predicts the parameters of any PyTorch model.

    Args:
        config: a :class:`GHNConfig` (or a dict of its fields); ``None`` uses the ``"small"`` preset.
        device: where the GHN lives and predicts (``"cpu"``, ``"cuda"``, ...).

    Example:
        >>> ghn = GHN.from_pretrained("checkpoints/ghn-fmnist")
        >>> model = ghn.predict(timm.create_model("resnet18", num_classes=10, in_chans=1))
        >>> pred = ghn.predict_params(model); pred.coverage.fraction
        1.0
    """

    def __init__(self, config: GHNConfig | None = None, device: str | torch.device | None = None):
        super().__init__()
        if config is None:
            config = GHNConfig.preset("small")
        elif isinstance(config, dict):
            config = GHNConfig.from_dict(config)
        elif not isinstance(config, GHNConfig):
            raise ConfigError(f"config must be a GHNConfig or a dict, got {type(config).__name__}")
        self.config = config
        c = config
        self.encoder = GraphEncoder(c.hidden_dim, c.num_layers, c.num_heads, c.max_hops, c.max_degree, c.ffn_ratio,
                                    c.dropout)
        self.decoder = LowRankDecoder(c.hidden_dim, c.decoder_hidden, c.basis, c.rank, c.code_seed,
                                      tuple(c.data_codes), c.code_gain, c.pooled_flatten, c.centered_fan_in,
                                      c.output_gain, c.whitened_codes, c.depth_code,
                                      c.fused_blocks, c.position_codes)
        if device is not None:
            self.to(resolve_device(device))

    @property
    def device(self) -> torch.device:
        return self.decoder.log_gain.device

    # ---- the differentiable path (training) ----------------------------------------------------------------------
    def embed(self, graphs: list[Graph]) -> list[torch.Tensor]:
        """Node embeddings, one ``(N_g, d)`` tensor per graph."""
        batch = collate(graphs, self.config.max_hops, self.config.max_degree, self.device)
        h = self.encoder(batch)
        return [h[i, :len(g)] for i, g in enumerate(graphs)]

    def forward(self, graphs: Graph | list[Graph]) -> list[dict[str, torch.Tensor]]:
        """Predict the parameters of each graph's model, differentiably.

        Args:
            graphs: one :class:`Graph` or a list (they are batched through the Graphormer together).

        Returns:
            one dict per graph: canonical parameter name → fp32 tensor of the parameter's shape, on the GHN's
            device. Use with ``torch.func.functional_call(model, {**params, **buffers}, inputs)``.
        """
        if isinstance(graphs, Graph):
            graphs = [graphs]
        hs = self.embed(graphs)
        # The decoder's products set every predicted value: under bf16 autocast they would keep 8 bits of mantissa.
        with torch.autocast(self.device.type, enabled=False):
            return [{info.name: w for info, w in self.decoder.decode(h.float(), graph_queries(g))}
                    for g, h in zip(graphs, hs)]

    # ---- prediction for users ------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_params(self, model: nn.Module, example_inputs: ExampleInputs = None, *,
                       graph: Graph | None = None) -> Prediction:
        """Predict the parameters of ``model`` without changing it.

        Args:
            model: any ``nn.Module`` (also on the ``meta`` device).
            example_inputs: see :func:`ghn.build_graph`; ignored when ``graph`` is given.
            graph: a graph built earlier from this model (``GraphError`` if its parameter names, shapes or ties
                are not this model's).

        Returns:
            a :class:`~ghn.prediction.Prediction` (``Mapping[str, Tensor]``) with ``.coverage``. Warns with
            :class:`CoverageWarning` if coverage is below 100 %, and with :class:`~ghn.errors.DomainWarning` if
            the model is outside the GHN's training domain (task, input shape, classes, vocabulary).

        Raises:
            NotAModuleError, UnsupportedModuleError: see :func:`~ghn.model_checks.check_model`.
        """
        check_model(model, "predict_params")
        graph = self._graph(model, example_inputs, graph)
        was_training = self.training
        self.eval()
        try:
            params = dict(self._decode(graph, model))
        finally:
            self.train(was_training)
        coverage = graph.coverage
        _warn_coverage(coverage, model)
        return Prediction(params, coverage, graph)

    @torch.no_grad()
    def predict(self, model: nn.Module, example_inputs: ExampleInputs = None, *,
                classifier: Literal["predict", "reinit"] = "predict",
                bn: Literal["train", "recalibrate"] = "train", bn_data: Iterable | None = None,
                branch_scale: float | None = None, graph: Graph | None = None,
                device: str | torch.device | None = None) -> nn.Module:
        """Write predicted parameters into ``model`` in place and return it.

        Args:
            model: the model; if it is on the ``meta`` device it is materialised on ``device`` (default CPU) and
                filled tensor by tensor, so peak memory stays near the model's own size.
            example_inputs: see :func:`ghn.build_graph`; when omitted, a batch shaped like the GHN's training
                data (``config.input_shape``) if the model runs on it, else what the model declares.
            classifier: ``"predict"`` keeps the predicted classifier/LM head; ``"reinit"`` resets it to the
                model's own initialisation (for a number of classes the GHN was not trained on). The head is the
                layer computing the output through activations and pooling only
                (:func:`~ghn.prediction.classifier_nodes`); a head tied to the input embedding is a ``ConfigError``,
                a model without one gets a warning.
            bn: BatchNorm running statistics are reset in both modes (they belonged to the old weights);
                ``"recalibrate"`` then recomputes them from ``bn_data`` (a cumulative average over ≤ 20 batches).
            bn_data: input batches for ``bn="recalibrate"``.
            branch_scale: multiplies the predicted gain that ends each residual branch (the norm or layer scale
                whose output is added to a skip path, :func:`ghn.graph.residual_branch_ends`), as libraries start
                those gains at or near zero so that deep residual nets start close to the identity. Below 1 it
                makes predicted residual nets easier to fine-tune at large learning rates (ledger E15, E18); 1
                leaves the prediction as it is; None: ``config.branch_scale``, the predictor's own calibration.
                A scale that makes a gain non-finite in the model's dtype is a ``ConfigError``.
            graph: a graph built earlier from this model (``GraphError`` if its parameter names, shapes or ties
                are not this model's).
            device: where to materialise a ``meta`` model.

        Returns:
            ``model`` itself (parameters overwritten, no autograd history kept).

        Raises:
            GHNError (and subclasses): nothing is written if prediction fails (a ``meta`` model, which had no
            values to lose, may be left materialised and partly filled). In particular ``DeviceError`` for a
            ``meta`` model with buffers its own code cannot recompute (build it under
            :func:`ghn.init_empty_weights`), raised before the model changes; ``NotAModuleError`` /
            ``UnsupportedModuleError`` for what :func:`~ghn.model_checks.check_model` refuses (a state dict, a
            ``DataParallel`` wrapper, a TorchScript or quantized model), raised first.
        """
        check_model(model, "predict")
        if classifier not in ("predict", "reinit"):
            raise ConfigError(f"classifier must be 'predict' or 'reinit', got {classifier!r}")
        if bn not in ("train", "recalibrate"):
            raise ConfigError(f"bn must be 'train' or 'recalibrate', got {bn!r}")
        branch_scale = self.config.branch_scale if branch_scale is None else branch_scale
        if not (isinstance(branch_scale, (int, float)) and math.isfinite(branch_scale) and branch_scale >= 0):
            raise ConfigError(f"branch_scale must be a finite number >= 0, got {branch_scale!r}")
        if bn == "recalibrate":
            try:
                iter(bn_data)
            except TypeError:
                raise ConfigError("bn='recalibrate' needs bn_data=<iterable of input batches>, got "
                                  f"{type(bn_data).__name__}") from None
        graph = self._graph(model, example_inputs, graph, check_classes=classifier == "predict")
        if not self.config.trained:  # after the graph: a prediction that fails shows its error and nothing else
            logger.warning("this GHN is untrained (config.trained=False): predicted parameters are a structured "
                           "random initialisation, not a learned one")
        coverage = graph.coverage
        # Both checked before anything is written: a tied head (ConfigError), gains that branch_scale overflows.
        heads = classifier_modules(model, graph) if classifier == "reinit" else []
        if classifier == "reinit" and not heads:
            warnings.warn(f"classifier='reinit': {type(model).__name__} has no classifier (its output is not computed "
                          "by a linear or conv layer), so nothing is re-initialised", UserWarning, stacklevel=3)
        ends = branch_end_params(graph) if branch_scale != 1.0 else set()
        on_meta = any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        # Recalibration runs after the write and may fail on user data: keep a copy to roll back to.
        backup = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                  if bn == "recalibrate" and not on_meta else None)
        was_training = self.training
        self.eval()
        try:
            if on_meta:
                # Nothing to lose on a meta model: stream tensor by tensor to bound memory.
                # DeviceError (model unchanged) if a buffer cannot be restored (those the prediction refreshes need not)
                materialize(model, device or "cpu", {b for p in graph.parametrized.values() for b in p.buffers})
                own = {**dict(model.named_buffers()), **dict(model.named_parameters())}  # once, not per tensor
                # fp32 parameters next to the decoder are decoded straight into their storage: no full-size
                # temporary per tensor, so the allocator has nothing to keep and the peak is the model itself
                into = {n: p.detach() for n, p in own.items()
                        if p.dtype == torch.float32 and p.device == self.device and p.is_contiguous()}
                for name, w in self._decode(graph, model, into):
                    one = {name: w}
                    scale_branch_ends(one, ends, branch_scale, own)
                    check_prediction(model, one, own)
                    w = one[name]
                    if w.data_ptr() != own[name].data_ptr():  # not decoded in place (vectors, kernels, fp16)
                        write_params(model, [(name, w)], own)
                    del w
            else:
                params = dict(self._decode(graph, model))
                scale_branch_ends(params, ends, branch_scale, dict(model.named_parameters()))
                check_prediction(model, params)  # everything is checked before anything is written
                write_params(model, params.items())
        finally:
            self.train(was_training)
        try:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    m.reset_running_stats()
            reinit_classifier(heads)
            if bn == "recalibrate":
                recalibrate_bn(model, bn_data)
        except BaseException:
            if backup is not None:
                model.load_state_dict(backup)
            raise
        _warn_coverage(coverage, model)
        logger.info("predicted %s: %s", type(model).__name__, coverage.summary())
        return model

    def _graph(self, model: nn.Module, example_inputs: ExampleInputs, graph: Graph | None,
               check_classes: bool = True) -> Graph:
        """The model's graph (built unless given; without inputs, traced with the GHN's training input), after
        warning with a DomainWarning if the model is outside what this GHN was trained on."""
        if graph is None:
            graph, example_inputs = graph_for(self.config, model, example_inputs, self.config.max_hops)
        else:
            check_graph(model, graph)  # a graph of another model would fill only the tensors the two share
        warn_domain(self.config, model, graph, example_inputs, check_classes=check_classes, stacklevel=4)
        return graph

    def _decode(self, graph: Graph, model: nn.Module, into: dict[str, torch.Tensor] | None = None):
        """``(name, tensor)`` for every bound parameter, with embedding padding rows zero (as PyTorch has them); a
        parametrized tensor (weight norm, ...) as the parameters and buffers that make the module compute it
        (:func:`ghn.parametrized.write_through`). ``into``: destinations the decoder may write into (see
        ``LowRankDecoder.decode``)."""
        h = self.embed([graph])[0]
        pads = padding_rows(model, graph)
        queries = graph_queries(graph)
        for info, w in (self.decoder.decode(h, queries, out=into) if into else self.decoder.decode(h, queries)):
            if info.name in pads:
                w = w.index_fill(0, torch.tensor(pads[info.name], device=w.device), 0.0)
            if info.name in graph.parametrized:
                yield from write_through(model, graph.parametrized[info.name], w).items()
            else:
                yield info.name, w

    # ---- Hub I/O ---------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, *, config: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict | None = None, **push_kwargs) -> None:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` to ``save_directory``.

        Files are written to temporary names and renamed, so an interrupted save never leaves a corrupt file.
        """
        from safetensors.torch import save_file
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        # Both files are written to temporary names first and renamed only when both are complete, so a crash
        # never pairs new weights with an old config (or leaves a partial file).
        # One metadata key only: safetensors keeps metadata in a hash map whose order changes from call to call, so
        # two keys would make two saves of the same weights differ in bytes (and checksum).
        weights_tmp = _temp_write(out / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
        try:
            # The hash of the very bytes renamed into place below; from_pretrained verifies it, so corruption that
            # leaves the file parseable and finite (a flipped exponent bit) cannot load silently.
            config = {**self.config.to_dict(), CHECKSUM_KEY: f"sha256:{_sha256(weights_tmp)}"}
            config_tmp = _temp_write(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
        except BaseException:
            os.unlink(weights_tmp)
            raise
        os.replace(config_tmp, out / CONFIG_NAME)
        os.replace(weights_tmp, out / WEIGHTS_NAME)
        if not (out / "README.md").exists():
            card = _model_card(self)
            _atomic_write(out / "README.md", lambda p: Path(p).write_text(card))
        if push_to_hub:
            self.push_to_hub(repo_id or out.name, **push_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        revision: str | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, token: str | bool | None = None, **kwargs) -> "GHN":
        """Load a GHN from a local directory or a Hub repo id (strictly: every tensor must match the config).

        Raises:
            CheckpointError: missing files, corrupt safetensors, a config that does not match the weights, or
                non-finite weights. Nothing half-loaded is ever returned.
        """
        if kwargs:
            raise ConfigError(f"unknown argument(s) {sorted(kwargs)} for GHN.from_pretrained")
        config_path, weights_path = _resolve_files(str(pretrained_model_name_or_path), revision, cache_dir,
                                                   local_files_only, token)
        try:
            raw = json.loads(Path(config_path).read_text())
            # Checkpoints saved before checksums were recorded have none: they load, with an UnverifiedWeightsWarning.
            checksum = raw.pop(CHECKSUM_KEY, None) if isinstance(raw, dict) else None
            config = GHNConfig.from_dict(GHNConfig.upgrade(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise CheckpointError(f"{config_path} is not a valid GHN config ({e}); re-download or re-save it") from e
        except ConfigError as e:
            raise CheckpointError(f"{config_path}: {e}") from e
        state = _load_safetensors(weights_path)
        with torch.random.fork_rng(devices=[]):  # building the GHN must not move the caller's random stream
            ghn = cls(config)
        expected = ghn.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_path} does not match {config_path}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; the two files come from "
                "different GHNs — save them together with save_pretrained")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(f"{weights_path}: tensor {k} has shape {tuple(v.shape)} but the config needs "
                                      f"{tuple(expected[k].shape)}; the config and weights do not belong together")
            if v.dtype != expected[k].dtype:
                raise CheckpointError(f"{weights_path}: tensor {k} is {v.dtype} but the GHN needs "
                                      f"{expected[k].dtype}; the checkpoint was not written by GHN.save_pretrained")
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise CheckpointError(f"{weights_path}: tensor {k} has NaN/Inf values; the checkpoint is corrupt")
        if checksum is not None:  # last, so the checks above give their more specific messages first
            _verify_checksum(weights_path, checksum, config_path)
        else:
            warnings.warn(f"{config_path} records no checksum of {WEIGHTS_NAME}, so its weights load unverified (a "
                          "corrupt but finite file would go unnoticed); re-save the GHN with save_pretrained to "
                          "record one", UnverifiedWeightsWarning, stacklevel=2)
        ghn.load_state_dict(state, strict=True)
        return ghn.to(resolve_device(device)).eval()

    # the mixin's generic loader is replaced by the strict one above
    @classmethod
    def _from_pretrained(cls, *, model_id: str, **kwargs) -> "GHN":  # type: ignore[override]
        return cls.from_pretrained(model_id)

    def _save_pretrained(self, save_directory: Path) -> None:  # used by the mixin's push_to_hub
        self.save_pretrained(save_directory)


def _model_card(ghn: "GHN") -> str:
    c = ghn.config
    n = sum(p.numel() for p in ghn.parameters())
    status = ("trained" if c.trained else
              "**untrained**: its predictions are a structured random initialisation, not a learned one")
    notes = "\n".join(f"- {k}: {v}" for k, v in c.notes.items()) or "- (none recorded)"
    return f"""---
library_name: ghn
license: mit
tags: [graph-hypernetwork, parameter-prediction, ghn]
---
# GHN ({n:,} parameters)

A LoGAH-style graph hypernetwork with an untiled low-rank decoder (package `ghn`). This predictor is {status}.

```python
from ghn import GHN
ghn = GHN.from_pretrained("<this directory or repo id>")
model = ghn.predict(model)   # writes predicted parameters in place
```

## Configuration
hidden_dim={c.hidden_dim}, num_layers={c.num_layers}, num_heads={c.num_heads}, basis={c.basis}, rank={c.rank},
decoder_hidden={c.decoder_hidden}; input shape {c.input_shape or "unspecified"}, classes {c.num_classes or "unspecified"}.

## Provenance
{notes}
"""


def _warn_coverage(coverage: CoverageReport, model: nn.Module) -> None:
    if coverage.fraction < 1.0 or coverage.missing:
        warnings.warn(f"{type(model).__name__}: {coverage.summary()}; not predicted: "
                      f"{', '.join(list(coverage.missing)[:5])}{' ...' if len(coverage.missing) > 5 else ''}",
                      CoverageWarning, stacklevel=3)


def _temp_write(path: Path, write) -> str:
    """Write via ``write(tmp_path)`` to a temporary file next to ``path``; return its name (caller renames it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary readable file
        return tmp
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path: Path, write) -> None:
    """Write via ``write(tmp_path)`` then rename over ``path`` (atomic on POSIX)."""
    os.replace(_temp_write(path, write), path)


def _resolve_files(name: str, revision, cache_dir, local_files_only, token) -> tuple[str, str]:
    from .shipped import resolve_predictor
    name = resolve_predictor(name)  # shipped predictors from any cwd; a missing local path is not a Hub id
    if os.path.isdir(name):
        paths = [os.path.join(name, CONFIG_NAME), os.path.join(name, WEIGHTS_NAME)]
        absent = [p for p in paths if not os.path.isfile(p)]
        pickles = [f for f in os.listdir(name) if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
        if absent and pickles and not os.path.isfile(paths[1]):
            raise CheckpointError(f"{name} has {', '.join(sorted(pickles))} but no {WEIGHTS_NAME}: ghn never loads "
                                  "pickle files (they can run arbitrary code); re-save the GHN with save_pretrained")
        if absent:
            raise CheckpointError(f"{name} is missing {', '.join(os.path.basename(p) for p in absent)}; a GHN "
                                  f"checkpoint is a directory with {CONFIG_NAME} and {WEIGHTS_NAME} (written by "
                                  "GHN.save_pretrained)")
        return paths[0], paths[1]
    if os.path.exists(name) or name.startswith((".", "/")) or name.count("/") > 1:
        raise CheckpointError(f"{name} is not a directory with a GHN checkpoint (and not a Hub repo id like "
                              "'org/name'); pass the directory written by GHN.save_pretrained")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(hf_hub_download(name, filename, revision=revision, cache_dir=cache_dir,
                                         local_files_only=local_files_only, token=token, library_name="ghn"))
        except HFValidationError as e:
            raise CheckpointError(f"{name!r} is neither a local directory nor a valid Hub repo id: {e}") from e
        except OSError as e:  # not found, offline with an empty cache, network errors
            raise CheckpointError(f"could not get {filename} of {name!r} from the Hub or its cache "
                                  f"({type(e).__name__}: {e}); check the repo id, or download it while online "
                                  "(HF_HUB_OFFLINE=1 only reads the cache)") from e
    return paths[0], paths[1]


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_checksum(weights_path: str, checksum: Any, config_path: str) -> None:
    """Raise CheckpointError unless ``weights_path`` hashes to ``checksum`` (``"sha256:<hex>"``)."""
    if not isinstance(checksum, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise CheckpointError(f"{config_path}: checksum {checksum!r} is not 'sha256:<64 hex digits>'; the config is "
                              "corrupt — re-download or re-save the checkpoint")
    actual = _sha256(weights_path)
    if actual != checksum.split(":", 1)[1]:
        raise CheckpointError(f"{weights_path} has sha256 {actual[:12]}… but {config_path} records "
                              f"{checksum[7:19]}…: the weights are corrupt or come from another save — re-download "
                              "or re-save the checkpoint")


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt — "
                              "re-download or re-save the checkpoint") from e

"""Triton client backend: the model runs on a KServe V2 / Triton server (`david-infer serve`, NVIDIA
Triton, KServe, MLServer) while pre- and postprocessing stay local: `DavidRuntime("grpc://host:8081/
david")` (or http://; the model name may be left out when the server serves one; /NAME/VERSION picks
a version; without a port, `serve`'s defaults). The contract is the manifest the server publishes
(or `manifest=PATH`), checked against the served model's metadata before the first request."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from ...contract import GraphIO, ModelContract, read_manifest
from ...errors import InputError, ModelError
from ...manifest import SERVED_MANIFEST_PREFIX
from ..base import Backend, BackendOptions, Device, Runner, Workload

#: key of the manifest in a Triton model config's `parameters`
CONFIG_MANIFEST_KEY = "david_manifest"
DEFAULT_PORTS = {"grpc": 8081, "http": 8080, "https": 443}


@dataclass(frozen=True)
class TritonOptions(BackendOptions):
    """Options of the triton backend. timeout: seconds each call may take (default 30); retries:
    extra attempts of a call the server did not answer (unreachable, timed out; default 0);
    retry_delay: seconds before the first retry, doubled for each next (default 0.5); manifest: a
    manifest file instead of the server's; token: sent as `Authorization: Bearer TOKEN`."""

    timeout: float = 30.0
    retries: int = 0
    retry_delay: float = 0.5
    manifest: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, value in (("timeout", self.timeout), ("retry_delay", self.retry_delay)):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or (name == "timeout" and value == 0):
                raise InputError(f"triton backend: {name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InputError(f"triton backend: retries must be 0 or more, got {self.retries!r}")
        if self.token is not None and (not isinstance(self.token, str) or not self.token.isprintable()):
            raise InputError("triton backend: token must be a string of printable characters")


def parse_url(url: str) -> Tuple[str, str, str, str]:
    """ "grpc://host:port/name[/version]" -> (scheme, "host:port", name or "", version or "")."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InputError(f"{url!r} is not a server URL; expected grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InputError(f"{url!r}: the port is not a number") from None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 2:
        raise InputError(f"{url!r}: expected at most /MODEL/VERSION after the address, got {parts.path!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return scheme, f"{host}:{port}", segments[0] if segments else "", segments[1] if len(segments) > 1 else ""


def _published_manifest(metadata: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The manifest `david-infer serve` publishes in the metadata's `versions`, if any."""
    for entry in metadata.get("versions") or ():
        if isinstance(entry, str) and entry.startswith(SERVED_MANIFEST_PREFIX):
            return _json_object(entry[len(SERVED_MANIFEST_PREFIX) :], "the model metadata's versions")
    return None


def _config_manifest(config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The manifest a Triton model config carries in `parameters` (our --triton-repo export)."""
    config = config.get("config", config)  # gRPC wraps the config in {"config": ...}
    value = (config.get("parameters") or {}).get(CONFIG_MANIFEST_KEY) or {}
    text = value.get("string_value") or value.get("stringValue")
    return _json_object(text, f"the model config's parameters[{CONFIG_MANIFEST_KEY!r}]") if text else None


def _json_object(text: str, where: str) -> Dict[str, Any]:
    """A published manifest's JSON object; ModelError (the caller adds the URL) if it is not one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"the manifest in {where} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"the manifest in {where} is not a JSON object")
    return value


def check_served(url: str, contract: ModelContract, io: GraphIO) -> None:
    """ModelError unless the served tensors are the contract's: same names, ranks, fixed dims and
    data types (a dim may be dynamic on either side)."""
    problems = []
    for kind, want, have in (("input", contract.inputs, io.inputs), ("output", contract.outputs, io.outputs)):
        served = {t.name: t for t in have}
        if sorted(served) != sorted(t.name for t in want):
            problems.append(f"{kind}s {sorted(served)} (the manifest describes {sorted(t.name for t in want)})")
            continue
        for spec in want:
            got = served[spec.name]
            same_dims = len(got.shape) == len(spec.shape) and all(
                not isinstance(a, int) or not isinstance(b, int) or a == b for a, b in zip(spec.shape, got.shape)
            )
            if not same_dims or got.dtype != spec.dtype:
                problems.append(
                    f"{kind} {spec.name!r} is {got.dtype} {list(got.shape)} (the manifest says "
                    f"{spec.dtype} {list(spec.shape)})"
                )
    if problems:
        raise ModelError(
            f"{url}: the served model does not match its manifest: "
            + "; ".join(problems)
            + ". The server serves another model, or the manifest belongs to another file"
        )


class TritonBackend(Backend):
    """Runs a model served over the KServe V2 / Triton protocol (gRPC or HTTP)."""

    name = "triton"
    title = "Triton client"
    schemes = ("grpc", "http", "https")
    devices = ("cpu",)  # the client's side: pre/postprocessing; the server picks its own device
    Options = TritonOptions
    options: TritonOptions

    def __init__(self, options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(options)
        self._served: Optional[Tuple[Any, str, str, GraphIO, List[str]]] = None

    def remote_contract(self, url: str) -> ModelContract:
        """Connects, finds the model, reads its metadata and manifest, and checks one against the other."""
        from .runner import Protocol, metadata_io

        scheme, address, model, version = parse_url(url)
        protocol = Protocol(url, scheme, address, self.options)
        client = protocol.client()
        try:
            if not protocol.grpc:
                server = protocol.ask(client, "get_server_metadata")
                protocol.binary = "binary_tensor_data" in (server.get("extensions") or ())
            model = model or self._only_model(protocol, client, url)
            metadata = protocol.ask(client, "get_model_metadata", model, version)
            if not isinstance(metadata, Mapping):
                raise ModelError(f"{url}: the server's model metadata is not a JSON object")
            manifest = self._manifest(protocol, client, url, model, version, metadata)
        except ModelError as exc:
            raise ModelError(str(exc) if str(exc).startswith(url) else f"{url}: {exc}") from None
        finally:
            client.close()
        try:
            contract = ModelContract.from_dict(Path(model), manifest)
        except ModelError as exc:
            raise ModelError(f"{url}: the manifest of the served model is not valid: {exc}") from None
        io = metadata_io(metadata)
        check_served(url, contract, io)
        self._served = (protocol, model, version, io, list(contract.output_names.values()))
        return contract

    def _only_model(self, protocol: Any, client: Any, url: str) -> str:
        try:
            index = protocol.ask(client, "get_model_repository_index")
        except ModelError as exc:  # a server without the repository extension
            raise ModelError(f"{exc}; name the model in the URL: SCHEME://HOST:PORT/MODEL") from None
        entries = index.get("models", []) if isinstance(index, Mapping) else index
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) and "name" in e for e in entries):
            raise ModelError(
                f"{url}: the server's model index is not a list of models; name the model in the URL: "
                "SCHEME://HOST:PORT/MODEL"
            )
        # MLServer spells the state "State.READY", Triton "READY"
        names = sorted({str(e["name"]) for e in entries if str(e.get("state", "READY")).upper().endswith("READY")})
        if len(names) != 1:
            raise ModelError(
                f"{url}: the server serves {len(names)} ready models ({', '.join(names) or 'none'}); "
                "name one in the URL: SCHEME://HOST:PORT/MODEL"
            )
        return names[0]

    def _manifest(
        self, protocol: Any, client: Any, url: str, model: str, version: str, metadata: Mapping[str, Any]
    ) -> Dict[str, Any]:
        if self.options.manifest:
            return read_manifest(self.options.manifest)
        manifest = _published_manifest(metadata)
        if manifest is None:
            try:  # NVIDIA Triton: a repository from `david-infer export --triton-repo`
                manifest = _config_manifest(protocol.ask(client, "get_model_config", model, version))
            except ModelError:  # servers without the model-config extension (MLServer) answer an error
                manifest = None
        if manifest is None:
            raise ModelError(
                f"{url}: the served model {model!r} publishes no david-infer manifest (neither in its "
                f"metadata nor in its config's parameters[{CONFIG_MANIFEST_KEY!r}]); serve it with "
                "david-infer serve, or pass manifest=PATH to its .json manifest"
            )
        return manifest

    def open(self, contract: ModelContract, device: Device, workload: Workload) -> Runner:
        from .runner import TritonRunner

        if self._served is None:
            raise ModelError("the triton backend opens a model after remote_contract(url) described it")
        protocol, model, version, io, outputs = self._served
        self._served = None
        return TritonRunner(protocol, model, version, io, outputs)

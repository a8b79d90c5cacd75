"""Upstream-style capabilities: ``@capability(name, version=…)`` on a plain function whose input
schema comes from its signature and which is called with keyword arguments.

The shape follows upstream loom-py (``loom-py/src/loom/capability.py`` in loom-os/loom); the code
is this SDK's own and needs no pydantic: the schema is JSON Schema derived from the annotations,
and arguments are checked against it before the function runs.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute ``@capability`` sets on the function (the name upstream uses).
ATTR = "__loom_capability__"

_JSON_TYPES: Dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
    bytes: "string",
}


def _json_type(annotation: Any) -> Optional[str]:
    """JSON Schema type of an annotation; None when any value is accepted."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (origin is not None and origin is getattr(types, "UnionType", None)):
        kinds = {_json_type(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    return _JSON_TYPES.get(origin or annotation)


@dataclass
class CapabilitySpec:
    """What ``@capability`` records about a function."""

    name: str
    version: str
    func: Callable[..., Any]
    # parameter name → (JSON type or None for any, required)
    params: Dict[str, Tuple[Optional[str], bool]] = field(default_factory=dict)
    # True when the function takes **kwargs: unknown argument names are passed through.
    open_args: bool = False
    # Parameters that take JSON null (annotated Optional, or defaulting to None).
    nullable: Tuple[str, ...] = ()

    @property
    def input_schema(self) -> Dict[str, Any]:
        props: Dict[str, Any] = {}
        for pname, (jtype, _) in self.params.items():
            props[pname] = {"type": jtype} if jtype else {}
        schema: Dict[str, Any] = {"type": "object", "properties": props}
        required = [p for p, (_, req) in self.params.items() if req]
        if required:
            schema["required"] = required
        if not self.open_args:
            schema["additionalProperties"] = False
        return schema

    @property
    def metadata(self) -> Dict[str, str]:
        """Registration metadata, as upstream sends it (``input_schema`` as compact JSON)."""
        return {
            f"capability.{self.name}.version": self.version,
            f"capability.{self.name}.input_schema": json.dumps(self.input_schema, separators=(",", ":")),
        }

    def bind(self, raw: bytes) -> Dict[str, Any]:
        """The keyword arguments for ``func`` from a call's JSON object; ``ValueError`` names
        what is wrong (not JSON, not an object, missing / unknown / mistyped argument)."""
        if not raw:
            data: Any = {}
        else:
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"capability {self.name}: arguments are not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"capability {self.name}: arguments must be a JSON object, got {type(data).__name__}")
        missing = [p for p, (_, req) in self.params.items() if req and p not in data]
        if missing:
            raise ValueError(f"capability {self.name}: missing argument(s) {', '.join(missing)}")
        unknown = [str(k)[:64] for k in data if k not in self.params]
        if unknown and not self.open_args:
            raise ValueError(f"capability {self.name}: unknown argument(s) {', '.join(unknown[:10])}")
        for key, value in data.items():
            jtype = self.params.get(key, (None, False))[0]
            if value is None and key in self.nullable:
                continue
            if jtype and not _matches(jtype, value):
                raise ValueError(f"capability {self.name}: argument {key[:64]} must be {jtype}, got {type(value).__name__}")
        return data

    async def invoke(self, raw: bytes) -> bytes:
        """Calls the function with the bound keyword arguments; its result as upstream encodes
        it: bytes as they are, None as empty, anything else as JSON."""
        out = self.func(**self.bind(raw))
        if inspect.isawaitable(out):
            out = await out
        if out is None:
            return b""
        if isinstance(out, (bytes, bytearray, memoryview)):
            return bytes(out)
        return json.dumps(out, separators=(",", ":")).encode("utf-8")


def _matches(jtype: str, value: Any) -> bool:
    if jtype == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if jtype == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if jtype == "string":
        return isinstance(value, str)
    if jtype == "boolean":
        return isinstance(value, bool)
    if jtype == "array":
        return isinstance(value, list)
    if jtype == "object":
        return isinstance(value, dict)
    return True


def capability(name: str, version: str = "1.0") -> Callable[[F], F]:
    """Declares a function as the capability ``name``; pass it to ``Agent(capabilities=[fn])``.

    ::

        @loom.capability("weather.get", version="1.0")
        async def get_weather(city: str, days: int = 1) -> dict: ...

    Callers send a JSON object; its keys are the function's keyword arguments.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("capability name must be a non-empty string")

    def deco(func: F) -> F:
        sig = inspect.signature(func)
        params: Dict[str, Tuple[Optional[str], bool]] = {}
        nullable: List[str] = []
        open_args = False
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # noqa: BLE001 - unresolvable annotations: accept any value
            hints = {}
        for pname, p in sig.parameters.items():
            if pname == "self":
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                open_args = True
                continue
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise TypeError(f"@capability({name!r}): {func.__name__} takes {pname} positionally only; "
                                "capabilities are called with keyword arguments")
            annotation = hints.get(pname, p.annotation)
            params[pname] = (_json_type(annotation), p.default is inspect.Parameter.empty)
            if p.default is None or type(None) in typing.get_args(annotation):
                nullable.append(pname)
        setattr(func, ATTR, CapabilitySpec(name=name, version=str(version), func=func, params=params,
                                           open_args=open_args, nullable=tuple(nullable)))
        return func

    return deco


def specs_of(functions: Any) -> List[CapabilitySpec]:
    """The ``CapabilitySpec`` of each function; ``TypeError`` names one not decorated."""
    out: List[CapabilitySpec] = []
    for fn in functions:
        spec = getattr(fn, ATTR, None)
        if not isinstance(spec, CapabilitySpec):
            raise TypeError(f"capabilities: {getattr(fn, '__name__', fn)!r} is not decorated with @loom.capability "
                            "(pass a list of @capability functions, or a {name: fn(ctx, request)} mapping)")
        out.append(spec)
    return out


__all__ = ["CapabilitySpec", "capability", "specs_of"]

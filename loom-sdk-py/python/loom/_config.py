"""Pieces of `loom.toml` reading shared by both schemas: the `.env` file, `${VAR}` expansion,
upstream's per-agent settings and `[llm.<provider>]` tables as agent environment, and the
built-in sidecar configuration written for projects without a `[sidecar]` section."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

# `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


class ConfigError(ValueError):
    """A loom.toml or .env value that cannot be used; the message names where it is."""


def read_dotenv(path: Path) -> Dict[str, str]:
    """`KEY=value` lines of a `.env` file (comments, blank lines and `export ` allowed; values
    may be single- or double-quoted). A missing file is empty."""
    if not path.is_file():
        return {}
    out: Dict[str, str] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if not m:
            raise ConfigError(f"{path}:{n}: expected KEY=value")
        key, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = value
    return out


def expand(value: Any, env: Mapping[str, str], where: str = "", missing: Optional[List[str]] = None) -> Any:
    """`${VAR}` / `${VAR:-default}` replaced in every string of a parsed TOML value. An unset
    variable without a default becomes empty (as upstream's loader leaves an unused provider's
    key) and `where: ${VAR}` is added to `missing`, for the runner to warn about."""
    if isinstance(value, str):

        def sub(m: "re.Match[str]") -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            if missing is not None:
                missing.append(f"{where or 'value'}: ${{{name}}}")
            return ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand(v, env, f"{where}.{k}" if where else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, env, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    return value


def env_name(key: str) -> str:
    """`LOOM_AGENT_<KEY>`: upper case, anything but letters and digits as `_`."""
    return "LOOM_AGENT_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def agent_settings_env(agent_id: str, settings: Mapping[str, Any]) -> Dict[str, str]:
    """Upstream's free per-agent settings as environment: `LOOM_AGENT_ID`, one
    `LOOM_AGENT_<KEY>` per setting, and all of them as one JSON object in `LOOM_AGENT_CONFIG`."""
    env = {"LOOM_AGENT_ID": agent_id, "LOOM_AGENT_CONFIG": json.dumps(dict(settings), separators=(",", ":"),
                                                                       default=str)}
    for key, value in settings.items():
        env[env_name(str(key))] = _scalar(value)
    return env


def llm_env(providers: Mapping[str, Mapping[str, Any]], chosen: Optional[str]) -> Dict[str, str]:
    """Upstream's `[llm.<provider>]` tables as environment: every provider as JSON in
    `LOOM_LLM_PROVIDERS`, and the agent's provider (its `llm_provider` setting, else the first
    table) as `LOOM_LLM_PROVIDER` / `LOOM_LLM_API_KEY` / `LOOM_LLM_API_BASE` / `LOOM_LLM_MODEL`
    (upstream's names) and `OPENAI_API_KEY` / `OPENAI_BASE_URL` / `OPENAI_MODEL` (what OpenAI-style
    clients read). Values reach the agent's environment only; the runner never prints them."""
    if not providers:
        return {}
    env = {"LOOM_LLM_PROVIDERS": json.dumps({k: dict(v) for k, v in providers.items()}, separators=(",", ":"),
                                            default=str)}
    name = chosen if chosen is not None and chosen in providers else next(iter(providers))
    p = providers[name]
    env["LOOM_LLM_PROVIDER"] = name
    for key, names in (("api_key", ("LOOM_LLM_API_KEY", "OPENAI_API_KEY")),
                       ("api_base", ("LOOM_LLM_API_BASE", "OPENAI_BASE_URL")),
                       ("model", ("LOOM_LLM_MODEL", "OPENAI_MODEL"))):
        value = p.get(key)
        if value not in (None, ""):
            for n in names:
                env[n] = str(value)
    return env


def default_sidecar_yaml(jaeger: bool) -> str:
    """The sidecar config `loom run` uses for a project without `[sidecar]`: as
    examples/trace-test/sidecar.yaml (every span printed by `debug` and written by `file`, which
    `loom traces` reads), plus an OTLP/gRPC exporter to `JAEGER_OTLP_ENDPOINT` when `jaeger`."""
    jaeger_exporter = (
        "  otlp/jaeger:\n"
        "    endpoint: \"${env:JAEGER_OTLP_ENDPOINT}\"\n"
        "    compression: gzip\n"
    ) if jaeger else ""
    exporters = "[debug, file, otlp/jaeger]" if jaeger else "[debug, file]"
    return (
        "# Written by `loom run` for a project without a [sidecar] section; rewritten at every start.\n"
        "receivers:\n"
        "  otlp:\n"
        "    protocols:\n"
        "      grpc: { endpoint: \"${env:LOOM_OTLP_GRPC_ENDPOINT:-127.0.0.1:4317}\" }\n"
        "      http: { endpoint: \"${env:LOOM_OTLP_HTTP_ENDPOINT:-127.0.0.1:4318}\" }\n"
        "processors:\n"
        "  memory_limiter: { limit_mib: 256, spike_limit_mib: 64 }\n"
        "  sampler:\n"
        "    default: { sampler: parentbased_always_on }\n"
        "  enrich: {}\n"
        "  batch: { send_batch_size: 512, timeout: 200ms }\n"
        "exporters:\n"
        "  debug: { verbosity: basic }\n"
        "  file: { path: \"${env:LOOM_TRACE_FILE:-.loom/spans.jsonl}\" }\n"
        f"{jaeger_exporter}"
        "extensions:\n"
        "  health_check: { endpoint: \"${env:LOOM_HEALTH_ENDPOINT:-127.0.0.1:13133}\" }\n"
        "service:\n"
        "  extensions: [health_check]\n"
        "  pipelines:\n"
        "    traces:\n"
        "      receivers: [otlp]\n"
        "      processors: [memory_limiter, sampler, enrich, batch]\n"
        f"      exporters: {exporters}\n"
        "  telemetry:\n"
        "    metrics: { address: \"${env:LOOM_METRICS_ENDPOINT:-127.0.0.1:8888}\" }\n"
        "    logs: { level: info }\n"
    )


def add_jaeger_exporter(config_text: str, source: Path) -> str:
    """A project's own sidecar config with an `otlp/jaeger` exporter to `JAEGER_OTLP_ENDPOINT`
    added to every traces pipeline (needs PyYAML)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(f"{source}: adding the JAEGER_OTLP_ENDPOINT exporter to a project's own sidecar "
                          "config needs PyYAML (pip install pyyaml), or set [sidecar] jaeger_config") from None
    try:
        doc = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    exporters = doc.setdefault("exporters", {}) or {}
    doc["exporters"] = exporters
    if "otlp/jaeger" not in exporters:
        exporters["otlp/jaeger"] = {"endpoint": "${env:JAEGER_OTLP_ENDPOINT}", "compression": "gzip"}
    pipelines = ((doc.get("service") or {}).get("pipelines") or {})
    for name, pipeline in pipelines.items():
        if str(name).split("/")[0] == "traces" and isinstance(pipeline, dict):
            names = list(pipeline.get("exporters") or [])
            if "otlp/jaeger" not in names:
                names.append("otlp/jaeger")
            pipeline["exporters"] = names
    return str(yaml.safe_dump(doc, sort_keys=False))

"""`loom run`'s reading of loom.toml: upstream loom-py's schema beside this project's own,
`${VAR}` expansion, `.env`, discovery of agents/*.py, per-agent settings and `[llm.*]` as env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loom._runner import Project, Runner, RunnerError

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_upstream_tables_settings_llm_dotenv_and_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL_WINS", "from-shell")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    root = write(tmp_path, {
        "loom.toml": """
name = "demo"
version = "1.2.3"
description = "d"
[bridge]
host = "127.0.0.1"
port = 50999
[dashboard]
host = "127.0.0.1"
port = 3999
[agents.chat-assistant]
command = "python3"
args = ["agents/chat_assistant.py", "--fast"]
topics = ["chat.input"]
llm_provider = "deepseek"
max_iterations = 10
nested = { a = 1 }
[agents.tool]
command = "node"
args = ["tool.js"]
env = { EXTRA = "${SHELL_WINS}" }
[llm.local]
api_base = "http://localhost:8000/v1"
model = "qwen"
[llm.deepseek]
api_key = "${DEEPSEEK_API_KEY}"
api_base = "${DEEPSEEK_BASE:-https://api.deepseek.com/v1}"
model = "deepseek-chat"
timeout_sec = 60
[mcp.fs]
command = "${NOT_SET_ANYWHERE}"
""",
        ".env": "# comment\nDEEPSEEK_API_KEY='sk-from-dotenv'\nexport SHELL_WINS=from-dotenv\n",
        "agents/chat_assistant.py": "",
    })
    p = Project.load(root)
    assert (p.schema, p.name, p.version, p.description) == ("upstream", "demo", "1.2.3", "d")
    assert p.bridge_address == "127.0.0.1:50999" and p.dashboard == "127.0.0.1:3999"
    assert p.unset_vars == ["mcp.fs.command: ${NOT_SET_ANYWHERE}"]
    chat, tool = p.agents
    assert chat.script == root / "agents/chat_assistant.py" and chat.args == ["--fast"] and chat.command is None
    assert chat.argv("/py") == ["/py", str(root / "agents/chat_assistant.py"), "--fast"]
    env = chat.env
    assert env["LOOM_AGENT_ID"] == "chat-assistant"
    assert env["LOOM_AGENT_MAX_ITERATIONS"] == "10" and env["LOOM_AGENT_TOPICS"] == '["chat.input"]'
    assert env["LOOM_AGENT_NESTED"] == '{"a":1}'
    assert json.loads(env["LOOM_AGENT_CONFIG"]) == {"topics": ["chat.input"], "llm_provider": "deepseek",
                                                    "max_iterations": 10, "nested": {"a": 1}}
    # The agent's llm_provider is chosen; .env filled in the key the shell did not set.
    assert (env["LOOM_LLM_PROVIDER"], env["OPENAI_API_KEY"], env["LOOM_LLM_API_KEY"]) == \
        ("deepseek", "sk-from-dotenv", "sk-from-dotenv")
    assert env["OPENAI_BASE_URL"] == "https://api.deepseek.com/v1" and env["OPENAI_MODEL"] == "deepseek-chat"
    assert set(json.loads(env["LOOM_LLM_PROVIDERS"])) == {"local", "deepseek"}
    # Not Python: run as given; `env` overrides; the shell beats .env.
    assert tool.argv("/py") == ["node", "tool.js"] and tool.env["EXTRA"] == "from-shell"
    assert tool.env["LOOM_LLM_PROVIDER"] == "local", "no llm_provider: the first table"
    assert p.dotenv["SHELL_WINS"] == "from-dotenv"
    assert Runner(p).base_env["SHELL_WINS"] == "from-shell"
    assert Runner(p).base_env["DEEPSEEK_API_KEY"] == "sk-from-dotenv"


def test_upstream_discovery_of_agents_py_with_settings_by_name(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "loom.toml": 'name = "disc"\n[agents.sensor-agent]\ninterval = 2\n[dashboard]\nenabled = false\n',
        "agents/sensor_agent.py": "", "agents/b.py": "", "agents/_helpers.py": "", "agents/notes.txt": "",
    })
    p = Project.load(root)
    assert [(a.name, a.script.name if a.script else None) for a in p.agents] == \
        [("b", "b.py"), ("sensor-agent", "sensor_agent.py")]
    assert p.agents[1].env["LOOM_AGENT_INTERVAL"] == "2" and p.dashboard == "off"
    assert p.sidecar_config is None and p.bridge_address == "127.0.0.1:50051"


@pytest.mark.parametrize("toml, files, problem", [
    ('name = "x"\n', {}, "no agents"),
    ('[agents.a]\ncommand = "python"\nargs = ["agents/missing.py"]\n', {}, "agents.a.args: .*missing.py does not exist"),
    ('[agents.a]\ncommand = "x"\n[agents.b]\nrole = "r"\n', {}, "agents.b has no command and agents/b.py does not exist"),
    ('[agents.a]\ncommand = "x"\nargs = "y"\n', {}, "agents.a.args must be a list"),
    ('[llm]\nopenai = "k"\n[agents.a]\ncommand = "x"\n', {}, r"llm: expected \[llm.<provider>\] tables"),
    ('[agents]\na = 1\n', {}, "agents.a must be a table"),
    ("name = \n", {}, "loom.toml"),
    ('[agents.a]\ncommand = "x"\n', {".env": "not a pair\n"}, r"\.env:1: expected KEY=value"),
])
def test_bad_upstream_projects_are_refused_with_the_key_named(tmp_path: Path, toml: str, files: dict,
                                                             problem: str) -> None:
    write(tmp_path, {"loom.toml": toml, **files})
    with pytest.raises(RunnerError, match=problem):
        Project.load(tmp_path)


def test_this_projects_schema_reads_as_before() -> None:
    p = Project.load(REPO / "examples" / "trace-test")
    assert p.schema == "loom" and p.name == "trace-test" and p.bridge_address == "127.0.0.1:50051"
    assert [a.name for a in p.agents] == ["output", "processor", "sensor"]
    assert p.sidecar_config == REPO / "examples/trace-test/sidecar.yaml"
    assert p.sidecar_jaeger_config == REPO / "examples/trace-test/sidecar-jaeger.yaml"
    assert p.agents[2].env == {"SENSOR_INTERVAL_S": "2"} and p.agents[0].wait_for == "connected to"
    assert p.agents[0].argv("/py") == ["/py", str(REPO / "examples/trace-test/agents/output.py")]


def test_native_schema_gets_vars_and_the_default_sidecar_without_a_section(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_GREETING", "hi")
    write(tmp_path, {
        "loom.toml": '[project]\nname = "n"\n[[agents]]\nname = "a"\nscript = "a.py"\n[agents.env]\nG = "${AGENT_GREETING}"\n',
        "a.py": "",
    })
    p = Project.load(tmp_path)
    assert p.schema == "loom" and p.agents[0].env == {"G": "hi"} and p.sidecar_config is None
    path = Runner(p)._sidecar_config()
    assert path == tmp_path / ".loom" / "sidecar-default.yaml"
    text = path.read_text()
    assert "file: { path:" in text and "debug:" in text and "otlp/jaeger" not in text

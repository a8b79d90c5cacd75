"""`loom run`'s dashboard settings: where the Jaeger link and the trace query URL come from."""

from pathlib import Path

from loom._runner import Project, Runner


def _project(tmp_path: Path, dashboard: str = "") -> Project:
    (tmp_path / "a.py").write_text("")
    (tmp_path / "loom.toml").write_text(
        '[project]\nname = "t"\n[[agents]]\nname = "a"\nscript = "a.py"\n' + dashboard)
    return Project.load(tmp_path)


def test_loom_toml_dashboard_table_is_the_fallback(tmp_path: Path) -> None:
    p = _project(tmp_path, '[dashboard]\njaeger_ui_url = "http://jaeger:16686"\ntrace_query_url = "http://q:16687"\n')
    env = Runner(p, env={"LOOM_JAEGER_UI_URL": "", "JAEGER_UI_URL": "", "LOOM_TRACE_QUERY_URL": ""})._dashboard_env()
    assert env == {"LOOM_JAEGER_UI_URL": "http://jaeger:16686", "LOOM_TRACE_QUERY_URL": "http://q:16687"}
    # The environment wins over the file.
    env = Runner(p, env={"LOOM_JAEGER_UI_URL": "http://other:1", "LOOM_TRACE_QUERY_URL": "http://q2:2"})._dashboard_env()
    assert env == {"LOOM_JAEGER_UI_URL": "http://other:1", "LOOM_TRACE_QUERY_URL": "http://q2:2"}


def test_no_settings_no_links(tmp_path: Path) -> None:
    env = Runner(_project(tmp_path), env={"LOOM_JAEGER_UI_URL": "", "JAEGER_UI_URL": "", "LOOM_TRACE_QUERY_URL": ""})._dashboard_env()
    assert env == {}


def test_auto_ports_give_the_dashboard_its_own_port(tmp_path: Path) -> None:
    r = Runner(_project(tmp_path), auto_ports=True, env={})
    assert r.base_env["LOOM_BRIDGE_DASHBOARD"].startswith("127.0.0.1:")
    assert r.base_env["LOOM_BRIDGE_DASHBOARD"] != "127.0.0.1:3030"

//! The `loom-bridge` binary under upstream Loom's environment names (issue #17): it listens where
//! `LOOM_BRIDGE_ADDR` says, puts the dashboard where `LOOM_DASHBOARD_HOST`/`_PORT` say, and
//! refuses a bad value naming the variable.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use loom_core::proto::bridge_client::BridgeClient;
use loom_core::proto::RegisterAgentRequest;

/// Kills the bridge however the test ends.
struct Bridge(Child);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bridge binary with none of the listen variables inherited from the caller's shell.
fn bridge_command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loom-bridge"));
    for k in [
        "LOOM_BRIDGE_LISTEN",
        "LOOM_BRIDGE_ADDR",
        "LOOM_BRIDGE_DASHBOARD",
        "LOOM_DASHBOARD",
        "LOOM_DASHBOARD_HOST",
        "LOOM_DASHBOARD_PORT",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("RUST_LOG", "warn").envs(vars.iter().copied());
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn loom_bridge_addr_sets_the_listen_address_and_dashboard_host_port_the_dashboard() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = bridge_command(&[
        ("LOOM_BRIDGE_ADDR", &listen),
        ("LOOM_DASHBOARD", "true"),
        ("LOOM_DASHBOARD_HOST", "127.0.0.1"),
        ("LOOM_DASHBOARD_PORT", "0"),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn loom-bridge");
    let stdout = child.stdout.take().unwrap();
    let _bridge = Bridge(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("a line from loom-bridge within 30 s")
    };
    assert_eq!(next_line(), format!("loom-bridge listening on {listen}"));
    let dash = next_line();
    let dash_addr = dash
        .strip_prefix("loom-bridge dashboard on http://")
        .unwrap_or_else(|| panic!("dashboard line, got {dash:?}"))
        .to_owned();
    assert!(dash_addr.starts_with("127.0.0.1:") && !dash_addr.ends_with(":0"));

    // A transport error (not a refusal) on a machine under load is retried: this test is about
    // which address the bridge took, and a refusal would still fail it at once.
    let mut reply = None;
    for attempt in 0..5 {
        let result = async {
            let mut client = BridgeClient::connect(format!("http://{listen}")).await?;
            Ok::<_, Box<dyn std::error::Error>>(
                client
                    .register_agent(RegisterAgentRequest {
                        agent_id: "env-agent".into(),
                        ..RegisterAgentRequest::default()
                    })
                    .await?
                    .into_inner(),
            )
        }
        .await;
        match result {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            Err(e) if attempt < 4 && e.to_string().contains("transport error") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("register at the address LOOM_BRIDGE_ADDR named: {e}"),
        }
    }
    let reply = reply.expect("registered");
    assert!(!reply.session_id.is_empty());

    // The dashboard sees the agent: it is the same bridge.
    let body = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&dash_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /api/agents HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"agent_id\":\"env-agent\""), "{body}");
}

/// Runs the bridge expecting it to refuse to start; returns its stderr.
fn refused(vars: &[(&str, &str)]) -> String {
    let mut child = bridge_command(vars)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loom-bridge");
    let mut stderr = child.stderr.take().unwrap();
    let mut bridge = Bridge(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let err = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("loom-bridge exits within 30 s");
    let status = bridge.0.wait().unwrap();
    assert!(!status.success(), "started with {vars:?}");
    err
}

#[test]
fn a_bad_upstream_value_stops_start_up_naming_the_variable() {
    let err = refused(&[("LOOM_BRIDGE_ADDR", "bridge.example:50051")]);
    assert!(
        err.contains("LOOM_BRIDGE_ADDR \"bridge.example:50051\""),
        "{err}"
    );
    let err = refused(&[
        ("LOOM_BRIDGE_ADDR", "127.0.0.1:0"),
        ("LOOM_DASHBOARD_PORT", "http"),
    ]);
    assert!(err.contains("LOOM_DASHBOARD_PORT \"http\""), "{err}");
}

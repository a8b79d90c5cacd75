//! Bearer-token authentication and per-token rules for the bridge's RPCs.
//!
//! Agents send `authorization: Bearer <token>` metadata on every RPC (the EventStream too). The
//! tokens come from a file (`--tokens-file` / `LOOM_BRIDGE_TOKENS_FILE`) in one of two forms:
//!
//! * one token per line (blank lines and `#` comments skipped): each token may do anything;
//! * YAML with rules (a line starts with `tokens:`):
//!   `tokens: [{name, token, agents, publish, subscribe, provide, invoke}]`,
//!   each list a set of globs (`*` matches any run of characters, as in subscriptions); a list
//!   left out allows everything, an empty list nothing.
//!
//! A missing or unknown token is UNAUTHENTICATED with one fixed message (it tells a prober
//! nothing); a known token outside its rules is PERMISSION_DENIED with a message naming the
//! token's name and the rule, never the secret. Tokens are compared in constant time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loom_core::event_bus;
use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The message of every UNAUTHENTICATED answer: the same for a missing, malformed or wrong token.
pub const UNAUTHENTICATED: &str =
    "missing or invalid bearer token (send `authorization: Bearer <token>` metadata)";

/// A token file that cannot be used; `at` is the file and, for YAML, the path in it.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct AuthError {
    pub at: String,
    pub message: String,
}

fn err(at: impl Into<String>, message: impl Into<String>) -> AuthError {
    AuthError {
        at: at.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    name: String,
    token: String,
    agents: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    provide: Option<Vec<String>>,
    invoke: Option<Vec<String>>,
}

/// What a rule governs; its name is the YAML key the refusal message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register (and heartbeat / stream as) an agent id.
    Agent,
    Publish,
    Subscribe,
    /// Serve a capability.
    Provide,
    /// Call a capability (ForwardAction).
    Invoke,
}

impl Action {
    fn key(self) -> &'static str {
        match self {
            Action::Agent => "agents",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Provide => "provide",
            Action::Invoke => "invoke",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Action::Agent => "act as agent id",
            Action::Publish => "publish to topic",
            Action::Subscribe => "subscribe to pattern",
            Action::Provide => "provide capability",
            Action::Invoke => "invoke capability",
        }
    }
}

/// One token and what it may do (`None` = anything).
pub struct Token {
    name: String,
    secret: Vec<u8>,
    rules: [Option<Vec<String>>; 5],
}

impl Token {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn rule(&self, action: Action) -> Option<&[String]> {
        self.rules[action as usize].as_deref()
    }

    /// Whether this token allows `action` on `subject` (an agent id, topic, subscription
    /// pattern or capability). A pattern is allowed when the glob matches it as a string: the
    /// glob's literal parts hold no `*`, so every topic the pattern matches is matched too.
    pub fn allows(&self, action: Action, subject: &str) -> bool {
        self.rule(action)
            .is_none_or(|globs| globs.iter().any(|g| event_bus::topic_matches(g, subject)))
    }

    /// [`Token::allows`] as a PERMISSION_DENIED naming the token and rule.
    pub fn check(&self, action: Action, subject: &str) -> Result<(), Status> {
        if self.allows(action, subject) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token {:?} may not {} {subject:?} (its `{}` rule does not match)",
            self.name,
            action.what(),
            action.key()
        )))
    }
}

/// At most one log line a second for a kind of refusal, with how many went unlogged since: a
/// flood of bad requests must not become a flood of log lines.
#[derive(Default)]
pub struct LogThrottle {
    last: parking_lot::Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl LogThrottle {
    /// `Some(skipped since the last line)` when this refusal may be logged.
    pub fn admit(&self) -> Option<u64> {
        let mut last = self.last.lock();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// The accepted tokens and refusal counters.
pub struct Auth {
    tokens: Vec<Token>,
    unauthenticated: AtomicU64,
    denied: AtomicU64,
    log_unauthenticated: LogThrottle,
    log_denied: LogThrottle,
}

// Never print a secret, even in a debug dump.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("Auth").field("tokens", &names).finish()
    }
}

/// Must fit in a header, or no client could ever send it.
fn check_secret(at: &str, s: &str) -> Result<(), AuthError> {
    if s.is_empty() {
        return Err(err(at, "the token is empty"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(at, "the token must be printable ASCII without spaces"));
    }
    Ok(())
}

fn check_globs(at: &str, globs: &Option<Vec<String>>) -> Result<(), AuthError> {
    for (i, g) in globs.iter().flatten().enumerate() {
        event_bus::validate_pattern(g).map_err(|e| err(format!("{at}[{i}]"), e.to_string()))?;
    }
    Ok(())
}

impl Auth {
    /// Reads a token file (see the module doc for its two forms).
    pub fn from_file(path: &str) -> Result<Auth, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path, format!("cannot read the token file: {e}")))?;
        Auth::parse(path, &text)
    }

    /// Parses a token file's text; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Auth, AuthError> {
        let yaml = text.lines().any(|l| l.starts_with("tokens:"));
        let tokens = if yaml {
            let file: TokensFile = serde_yaml::from_str(text).map_err(|e| {
                // serde_yaml's message starts with the path in the document (`tokens[1]: …`).
                err(path, e.to_string())
            })?;
            let mut tokens = Vec::with_capacity(file.tokens.len());
            for (i, t) in file.tokens.into_iter().enumerate() {
                let at = format!("{path}: tokens[{i}]");
                if t.name.trim().is_empty() {
                    return Err(err(format!("{at}.name"), "must not be empty"));
                }
                check_secret(&format!("{at}.token"), &t.token)?;
                check_globs(&format!("{at}.agents"), &t.agents)?;
                check_globs(&format!("{at}.publish"), &t.publish)?;
                check_globs(&format!("{at}.subscribe"), &t.subscribe)?;
                check_globs(&format!("{at}.provide"), &t.provide)?;
                check_globs(&format!("{at}.invoke"), &t.invoke)?;
                tokens.push(Token {
                    name: t.name,
                    secret: t.token.into_bytes(),
                    rules: [t.agents, t.publish, t.subscribe, t.provide, t.invoke],
                });
            }
            tokens
        } else {
            let mut tokens = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let name = format!("line {}", n + 1);
                check_secret(&format!("{path}: {name}"), line)?;
                tokens.push(Token {
                    name,
                    secret: line.as_bytes().to_vec(),
                    rules: Default::default(),
                });
            }
            tokens
        };
        if tokens.is_empty() {
            return Err(err(
                path,
                "holds no token; the bridge would refuse every agent",
            ));
        }
        for (i, t) in tokens.iter().enumerate() {
            if let Some(j) = tokens[..i].iter().position(|o| o.name == t.name) {
                return Err(err(
                    path,
                    format!("token name {:?} is used twice (#{j} and #{i})", t.name),
                ));
            }
            if let Some(o) = tokens[..i].iter().find(|o| o.secret == t.secret) {
                return Err(err(
                    path,
                    format!(
                        "tokens {:?} and {:?} have the same secret: a request could not tell their rules apart",
                        o.name, t.name
                    ),
                ));
            }
        }
        Ok(Auth {
            tokens,
            unauthenticated: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            log_unauthenticated: LogThrottle::default(),
            log_denied: LogThrottle::default(),
        })
    }

    /// The token a request carries; UNAUTHENTICATED (counted, logged without the secret) when
    /// it carries none or an unknown one. `rpc` names the call in the log.
    pub fn authenticate(&self, metadata: &MetadataMap, rpc: &str) -> Result<usize, Status> {
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().as_bytes())
            });
        // Every token is compared, so the time taken does not say which one came close.
        let found = presented.and_then(|p| {
            self.tokens.iter().enumerate().fold(None, |hit, (i, t)| {
                if ct_eq(&t.secret, p) {
                    Some(i)
                } else {
                    hit
                }
            })
        });
        match found {
            Some(t) => Ok(t),
            None => {
                self.unauthenticated.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = self.log_unauthenticated.admit() {
                    tracing::warn!(
                        rpc,
                        token_sent = presented.is_some(),
                        unlogged_before = skipped,
                        "request refused: missing or unknown bearer token"
                    );
                }
                Err(Status::unauthenticated(UNAUTHENTICATED))
            }
        }
    }

    /// The token at `index` (as [`Auth::authenticate`] returns it).
    pub fn token(&self, index: usize) -> &Token {
        &self.tokens[index]
    }

    /// Counts and logs a PERMISSION_DENIED (the message names token and rule, not the secret).
    pub fn denied(&self, status: Status) -> Status {
        self.denied.fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = self.log_denied.admit() {
            tracing::warn!(
                unlogged_before = skipped,
                "request refused: {}",
                status.message()
            );
        }
        status
    }

    /// Requests refused as UNAUTHENTICATED so far.
    pub fn unauthenticated_count(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }

    /// Requests (and publishes) refused as PERMISSION_DENIED so far.
    pub fn denied_count(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }
}

/// Constant-time equality for equal lengths (a length mismatch returns early, which only
/// tells the length).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request may do: everything when the bridge has no token file, else its token's rules.
#[derive(Clone, Copy)]
pub struct Grant<'a> {
    /// The token file and the index of the request's token in it.
    token: Option<(&'a Auth, usize)>,
}

impl<'a> Grant<'a> {
    /// Authenticates a request against `auth` (open when there is none).
    pub fn of(auth: Option<&'a Auth>, metadata: &MetadataMap, rpc: &str) -> Result<Self, Status> {
        let token = match auth {
            None => None,
            Some(a) => Some((a, a.authenticate(metadata, rpc)?)),
        };
        Ok(Grant { token })
    }

    /// The grant of a token found earlier (by [`Grant::key`]), for a stream that outlives the
    /// request it was opened with.
    pub fn resume(auth: Option<&'a Auth>, key: Option<usize>) -> Self {
        Grant {
            token: auth.zip(key),
        }
    }

    /// What [`Grant::resume`] needs to find this grant again.
    pub fn key(&self) -> Option<usize> {
        self.token.map(|(_, i)| i)
    }

    /// PERMISSION_DENIED (counted and logged) unless the grant allows `action` on `subject`.
    pub fn check(&self, action: Action, subject: &str) -> Result<(), Status> {
        match self.token {
            None => Ok(()),
            Some((auth, i)) => auth.tokens[i]
                .check(action, subject)
                .map_err(|s| auth.denied(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    const RULES: &str = "\
tokens:
  - name: sensors
    token: s3cret-sensors
    agents: [\"sensor-*\"]
    publish: [\"sensor.*\"]
    subscribe: []
  - name: ops
    token: s3cret-ops
";

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", MetadataValue::try_from(value).unwrap());
        m
    }

    #[test]
    fn line_tokens_allow_everything_and_skip_comments() {
        let a = Auth::parse("t", "# agents\n\n  tok-1  \ntok-2\n").unwrap();
        let t = a.token(a.authenticate(&md("Bearer tok-2"), "x").unwrap());
        assert_eq!(t.name(), "line 4");
        assert!(t.allows(Action::Agent, "anything"));
        assert!(t.allows(Action::Subscribe, "*"));
        assert!(a.authenticate(&md("bearer tok-1"), "x").is_ok());
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_get_one_unauthenticated_answer() {
        let a = Auth::parse("t", RULES).unwrap();
        for m in [
            MetadataMap::new(),
            md("s3cret-ops"),
            md("Basic s3cret-ops"),
            md("Bearer s3cret-op"),
            md("Bearer s3cret-opsx"),
        ] {
            let e = a.authenticate(&m, "x").err().unwrap();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert_eq!(e.message(), UNAUTHENTICATED);
        }
        assert_eq!(a.unauthenticated_count(), 5);
    }

    #[test]
    fn rules_are_globs_and_a_refusal_names_the_rule_not_the_secret() {
        let a = Auth::parse("t", RULES).unwrap();
        let m = md("Bearer s3cret-sensors");
        let t = a.token(a.authenticate(&m, "x").unwrap());
        assert!(t.allows(Action::Agent, "sensor-1"));
        assert!(!t.allows(Action::Agent, "processor"));
        assert!(t.allows(Action::Publish, "sensor.a.b"));
        assert!(t.allows(Action::Provide, "any.cap"), "no rule = anything");
        assert!(!t.allows(Action::Subscribe, "sensor.data"), "[] = nothing");
        // A pattern is allowed only when the glob covers every topic it matches.
        let wide = Auth::parse(
            "t",
            "tokens:\n  - {name: w, token: w, subscribe: [\"sensor.*\"]}\n",
        )
        .unwrap();
        let w = wide.token(wide.authenticate(&md("Bearer w"), "x").unwrap());
        assert!(w.allows(Action::Subscribe, "sensor.*"));
        assert!(w.allows(Action::Subscribe, "sensor.temp"));
        assert!(!w.allows(Action::Subscribe, "*"));
        assert!(!w.allows(Action::Subscribe, "sens*"));

        let grant = Grant::of(Some(&a), &m, "x").unwrap();
        assert!(grant.check(Action::Agent, "sensor-2").is_ok());
        let e = grant.check(Action::Agent, "processor").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("\"sensors\""), "{}", e.message());
        assert!(e.message().contains("`agents` rule"), "{}", e.message());
        assert!(!e.message().contains("s3cret"));
        assert_eq!(a.denied_count(), 1);
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn the_log_throttle_admits_one_line_a_second_and_counts_the_rest() {
        let t = LogThrottle::default();
        assert_eq!(t.admit(), Some(0));
        assert_eq!((t.admit(), t.admit()), (None, None));
        *t.last.lock() = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.admit(), Some(2));
        assert_eq!(t.admit(), None);
    }

    #[test]
    fn bad_token_files_are_refused_with_their_place() {
        for (text, needle) in [
            ("", "holds no token"),
            ("# only a comment\n", "holds no token"),
            ("a b\n", "t: line 1: the token must be printable ASCII"),
            ("same\nsame\n", "same secret"),
            (
                "tokens:\n  - {name: x, token: \"\"}\n",
                "t: tokens[0].token: the token is empty",
            ),
            (
                "tokens:\n  - {name: x, token: a}\n  - {name: x, token: b}\n",
                "token name \"x\" is used twice",
            ),
            (
                "tokens:\n  - {name: x, token: a, agents: [\"a b\"]}\n",
                "t: tokens[0].agents[0]:",
            ),
            (
                "tokens:\n  - {name: x, token: a, topics: []}\n",
                "unknown field `topics`",
            ),
        ] {
            let e = Auth::parse("t", text).err().unwrap().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}

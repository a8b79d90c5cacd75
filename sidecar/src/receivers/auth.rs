//! Bearer-token authentication for receivers (`auth: { bearer_token | bearer_token_file }`).
//!
//! Clients send `Authorization: Bearer <token>` (gRPC metadata or HTTP header). A missing or
//! wrong token gets gRPC UNAUTHENTICATED / HTTP 401 with the same fixed message either way, so
//! the answer tells a caller nothing about what was wrong. The check runs before the request body
//! is read or decoded, so unauthenticated clients cost as little as possible. The token itself is
//! never logged, and `print-config` redacts it (its key contains `token`).

use serde::Deserialize;

use crate::config::{one_of, ConfigError, OneOf, ParseCtx};

/// The message of every refusal: deliberately the same for a missing, malformed or wrong token.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// `receivers.<id>.auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The token itself, usually `${env:VAR}`.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// A file holding the token (surrounding whitespace ignored), e.g. a mounted secret.
    #[serde(default)]
    pub bearer_token_file: Option<String>,
}

/// A checked token.
#[derive(Clone)]
pub struct BearerAuth {
    token: Vec<u8>,
}

// Never print the token, even in a debug dump.
impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

impl AuthConfig {
    /// Resolves the token (reading the file now, so `validate` catches a missing one).
    pub fn resolve(&self, path: &str, ctx: &ParseCtx<'_>) -> Result<BearerAuth, ConfigError> {
        let given = one_of(
            &format!("{path}.auth"),
            ("bearer_token", self.bearer_token.as_ref()),
            ("bearer_token_file", self.bearer_token_file.as_ref()),
        )?;
        let (token, at) = match given {
            OneOf::First(t) => (t.clone(), format!("{path}.auth.bearer_token")),
            OneOf::Second(f) => {
                let at = format!("{path}.auth.bearer_token_file");
                let text = std::fs::read_to_string(f)
                    .map_err(|e| ConfigError::at(&at, format!("cannot read {f:?}: {e}")))?;
                (text.trim().to_owned(), at)
            }
        };
        if token.is_empty() {
            return Err(ConfigError::at(
                &at,
                format!(
                    "the token is empty{}; an unset variable would leave the receiver open",
                    ctx.origin_hint(&at)
                ),
            ));
        }
        // Must fit in a header, or no client could ever send it.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::at(
                &at,
                "the token must be printable ASCII without spaces",
            ));
        }
        Ok(BearerAuth {
            token: token.into_bytes(),
        })
    }
}

impl BearerAuth {
    /// Whether an `Authorization` header value carries the right token.
    pub fn check(&self, header: Option<&[u8]>) -> bool {
        let Some(h) = header else {
            return false;
        };
        // RFC 6750: the scheme is case-insensitive; one space before the token.
        let Some((scheme, given)) = h.split_first_chunk::<7>() else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(given, &self.token)
    }
}

/// Compares in time that depends only on the expected token's length, never on where the first
/// differing byte is, so response times reveal nothing about the token's content.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() ^ expected.len()) as u64;
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= u64::from(g ^ e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ctx_with<'a>(
        origins: &'a BTreeMap<String, Vec<String>>,
        lookup: &'a dyn Fn(&str) -> Option<String>,
    ) -> ParseCtx<'a> {
        ParseCtx { origins, lookup }
    }

    #[test]
    fn tokens_are_compared_whole() {
        let a = BearerAuth {
            token: b"s3cret-token".to_vec(),
        };
        assert!(a.check(Some(b"Bearer s3cret-token")));
        assert!(a.check(Some(b"bearer s3cret-token")));
        for bad in [
            &b"Bearer s3cret-toke"[..],
            b"Bearer s3cret-token2",
            b"Bearer S3cret-token",
            b"Basic s3cret-token",
            b"Bearer",
            b"",
            b"s3cret-token",
        ] {
            assert!(!a.check(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!a.check(None));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b""));
        assert_eq!(format!("{a:?}"), "BearerAuth(<redacted>)");
    }

    #[test]
    fn config_errors_name_the_path_and_the_variable() {
        let origins: BTreeMap<String, Vec<String>> = [(
            "receivers.otlp.auth.bearer_token".to_owned(),
            vec!["TOKEN".to_owned()],
        )]
        .into();
        let lookup = |_: &str| None;
        let ctx = ctx_with(&origins, &lookup);
        let empty = AuthConfig {
            bearer_token: Some(String::new()),
            bearer_token_file: None,
        };
        let e = empty
            .resolve("receivers.otlp", &ctx)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "receivers.otlp.auth.bearer_token: the token is empty (from ${env:TOKEN})"
            ),
            "{e}"
        );
        let refusal = |token: Option<&str>, file: Option<&str>| {
            AuthConfig {
                bearer_token: token.map(str::to_owned),
                bearer_token_file: file.map(str::to_owned),
            }
            .resolve("receivers.otlp", &ctx)
            .unwrap_err()
            .to_string()
        };
        assert!(refusal(Some("a"), Some("/x")).contains("not both"));
        assert!(refusal(None, Some("/nonexistent/token"))
            .starts_with("receivers.otlp.auth.bearer_token_file: cannot read"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "from-file\n").unwrap();
        let ok = AuthConfig {
            bearer_token: None,
            bearer_token_file: Some(f.display().to_string()),
        }
        .resolve("receivers.otlp", &ctx)
        .unwrap();
        assert!(ok.check(Some(b"Bearer from-file")));
    }
}

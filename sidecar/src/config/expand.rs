//! `${env:VAR}` and `${env:VAR:-default}` expansion over every string of a YAML document.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::ConfigError;

/// Expands env references in every string scalar (map keys included). A scalar that is exactly
/// one reference is re-read as YAML after expansion, so `"${env:RATIO:-0.5}"` becomes a number,
/// as in the OpenTelemetry Collector. `$$` is a literal `$`.
///
/// `origins` records, per YAML path, which variables a value came from, so validation errors
/// can name the variable the user has to fix.
pub fn expand(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    origins: &mut BTreeMap<String, Vec<String>>,
) -> Result<(), ConfigError> {
    match v {
        Value::String(s) => {
            let (out, vars, whole) = expand_str(s, path, lookup)?;
            if !vars.is_empty() {
                origins.insert(path.to_owned(), vars);
            }
            *v = if whole {
                reparse_scalar(&out)
            } else {
                Value::String(out)
            };
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{i}]"), lookup, origins)?;
            }
        }
        Value::Mapping(map) => {
            let entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
            for (mut k, mut val) in entries {
                let key_name = key_text(&k);
                let child = if path.is_empty() {
                    key_name.clone()
                } else {
                    format!("{path}.{key_name}")
                };
                if let Value::String(ks) = &k {
                    let (out, _, _) = expand_str(ks, &child, lookup)?;
                    k = Value::String(out);
                }
                expand(&mut val, &child, lookup, origins)?;
                map.insert(k, val);
            }
        }
        Value::Tagged(t) => expand(&mut t.value, path, lookup, origins)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

pub(crate) fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

fn reparse_scalar(s: &str) -> Value {
    // Only plain scalars: an env var holding "a: b" must stay a string, not become a map.
    match serde_yaml::from_str::<Value>(s) {
        Ok(v @ (Value::Bool(_) | Value::Number(_))) => v,
        _ => Value::String(s.to_owned()),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Returns the expanded text, the variables referenced, and whether the input was exactly one
/// reference.
fn expand_str(
    s: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>, bool), ConfigError> {
    if !s.contains('$') {
        return Ok((s.to_owned(), Vec::new(), false));
    }
    let mut out = String::with_capacity(s.len());
    let mut vars = Vec::new();
    let mut rest = s;
    let mut refs = 0usize;
    let mut literal = false;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        if !rest[..at].is_empty() {
            literal = true;
        }
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            literal = true;
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| ConfigError::at(path, format!("unclosed \"${{\" in {s:?}")))?;
            let inner = &body[..end];
            let Some(reference) = inner.strip_prefix("env:") else {
                return Err(ConfigError::at(
                    path,
                    format!("unsupported reference \"${{{inner}}}\": use ${{env:NAME}} or ${{env:NAME:-default}}"),
                ));
            };
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            if !valid_name(name) {
                return Err(ConfigError::at(
                    path,
                    format!("invalid environment variable name {name:?} in \"${{{inner}}}\""),
                ));
            }
            let value = match lookup(name).filter(|v| !v.is_empty()) {
                Some(v) => v,
                None => default.unwrap_or("").to_owned(),
            };
            out.push_str(&value);
            vars.push(name.to_owned());
            refs += 1;
            rest = &body[end + 1..];
        } else {
            out.push('$');
            literal = true;
            rest = &tail[1..];
        }
    }
    if !rest.is_empty() {
        literal = true;
    }
    out.push_str(rest);
    Ok((out, vars, refs == 1 && !literal))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, env: &[(&str, &str)]) -> Result<Value, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut origins = BTreeMap::new();
        expand(&mut v, "", &|k| env.get(k).cloned(), &mut origins)?;
        Ok(v)
    }

    #[test]
    fn expands_defaults_and_retypes_whole_scalars() {
        let v = run(
            "a: ${env:A}\nb: \"${env:B:-0.5}\"\nc: pre-${env:A}-post\nd: $$HOME\ne: ${env:MISSING}\nf: ${env:T}",
            &[("A", "x"), ("T", "true")],
        )
        .unwrap();
        assert_eq!(v["a"], Value::String("x".into()));
        assert_eq!(v["b"].as_f64(), Some(0.5));
        assert_eq!(v["c"], Value::String("pre-x-post".into()));
        assert_eq!(v["d"], Value::String("$HOME".into()));
        assert_eq!(v["e"], Value::String(String::new()));
        assert_eq!(v["f"], Value::Bool(true));
    }

    #[test]
    fn env_values_never_become_structure() {
        let v = run("a: ${env:A}", &[("A", "k: v")]).unwrap();
        assert_eq!(v["a"], Value::String("k: v".into()));
    }

    #[test]
    fn bad_references_name_the_path() {
        let e = run("x:\n  y: ${env:A", &[]).unwrap_err();
        assert!(e.to_string().starts_with("x.y: unclosed"), "{e}");
        let e = run("x: ${file:/etc/passwd}", &[]).unwrap_err();
        assert!(e.to_string().contains("unsupported reference"), "{e}");
        let e = run("x: ${env:1BAD}", &[]).unwrap_err();
        assert!(
            e.to_string().contains("invalid environment variable name"),
            "{e}"
        );
    }
}

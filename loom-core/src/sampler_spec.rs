//! The one parser of sampler settings (`OTEL_TRACES_SAMPLER` & co.), shared by Rust, the sidecar and Python.
//!
//! Rust processes ([`crate::telemetry`]), the sidecar's `sampler` processor and the Python SDK
//! (through `loom._native.parse_sampler_env`) all call this module, so one string gets one
//! verdict everywhere; `tests/sampler_vectors.json` holds the three to it. It needs no runtime
//! feature: the sidecar and the Python extension link loom-core without tokio or OpenTelemetry.
//!
//! Accepted (see `docs/contracts.md` §3):
//! - the names of the OpenTelemetry SDK environment spec ([`SAMPLER_NAMES`]), matched after
//!   trimming and lower-casing;
//! - the inline `name=ratio` form (`traceidratio=0.1`, `parentbased_traceidratio=0.25`), only for
//!   the two ratio samplers;
//! - the ratio from the matching `_ARG` variable, default `1.0`, read only for ratio samplers.
//!
//! Rules:
//! - `OTEL_TRACES_SAMPLER` (standard) wins over `OTEL_TRACE_SAMPLER` (Loom's historical
//!   spelling); a blank value counts as unset; neither set means [`DEFAULT_SAMPLER`].
//! - The ratio comes from the inline form when there is one, and then no `_ARG` variable is read
//!   at all (not even checked): the value that names the sampler is the more specific one, and
//!   configs such as the sidecar's always pass an `_ARG` default of `1.0` next to it.
//! - Otherwise the chosen variable's own `_ARG` is read first, then the other spelling's.
//! - Anything else (unknown name, ratio outside `[0, 1]` or not a number, an inline ratio on a
//!   sampler that takes none) is an error naming the variable; never a silent default.

use std::fmt;

/// Sampler names of the OpenTelemetry SDK environment spec.
pub const SAMPLER_NAMES: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// The sampler when no variable names one: the OpenTelemetry SDKs' own default. It samples every
/// root and follows the parent otherwise, so a process never records children of a trace its
/// caller dropped.
pub const DEFAULT_SAMPLER: &str = "parentbased_always_on";

/// The standard variable naming the sampler; wins over [`LEGACY_SAMPLER_VAR`].
pub const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
/// The standard variable holding the ratio.
pub const SAMPLER_ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Loom's historical spelling of [`SAMPLER_VAR`].
pub const LEGACY_SAMPLER_VAR: &str = "OTEL_TRACE_SAMPLER";
/// Loom's historical spelling of [`SAMPLER_ARG_VAR`].
pub const LEGACY_SAMPLER_ARG_VAR: &str = "OTEL_TRACE_SAMPLER_ARG";

/// A sampler choice, before it becomes an SDK sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSpec {
    /// The canonical name, one of [`SAMPLER_NAMES`].
    pub fn name(&self) -> &'static str {
        match self {
            SamplerSpec::AlwaysOn => "always_on",
            SamplerSpec::AlwaysOff => "always_off",
            SamplerSpec::TraceIdRatio(_) => "traceidratio",
            SamplerSpec::ParentBasedAlwaysOn => "parentbased_always_on",
            SamplerSpec::ParentBasedAlwaysOff => "parentbased_always_off",
            SamplerSpec::ParentBasedTraceIdRatio(_) => "parentbased_traceidratio",
        }
    }

    /// The sampling ratio of the two ratio samplers; `None` for the others.
    pub fn ratio(&self) -> Option<f64> {
        match *self {
            SamplerSpec::TraceIdRatio(r) | SamplerSpec::ParentBasedTraceIdRatio(r) => Some(r),
            _ => None,
        }
    }
}

/// A sampler setting that cannot be used. Each names the variable (or config key) it read, and
/// quotes the value as text with control characters escaped: the value comes from outside.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerSpecError {
    #[error("{var}={} is not a known sampler; accepted values: always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio (the ratio ones also as traceidratio=<ratio>)", Quoted(.value))]
    UnknownSampler { var: String, value: String },
    #[error("{var}={} is not a sampling ratio; expected a number from 0.0 to 1.0", Quoted(.value))]
    InvalidRatio { var: String, value: String },
    #[error("{var}={} gives a ratio to {name}, which takes none; only traceidratio and parentbased_traceidratio take a ratio", Quoted(.value))]
    UnexpectedRatio {
        var: String,
        value: String,
        name: &'static str,
    },
}

impl SamplerSpecError {
    /// The variable (or config key) whose value is wrong.
    pub fn var(&self) -> &str {
        match self {
            SamplerSpecError::UnknownSampler { var, .. }
            | SamplerSpecError::InvalidRatio { var, .. }
            | SamplerSpecError::UnexpectedRatio { var, .. } => var,
        }
    }
}

/// How much of a value an error quotes; the rest is cut (`...`), as the value comes from outside.
const QUOTED_MAX_CHARS: usize = 200;

/// `'text'` with quotes, backslashes and control characters escaped: the same rendering as
/// Python's `repr` for plain text, so the SDKs' messages read alike.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'")?;
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(QUOTED_MAX_CHARS) {
            match c {
                '\'' => f.write_str("\\'")?,
                '"' => f.write_str("\"")?,
                c => write!(f, "{}", c.escape_debug())?,
            }
        }
        f.write_str("'")?;
        if chars.next().is_some() {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// A ratio from `raw` (trimmed): a finite number from 0.0 to 1.0, else an error naming `var`.
pub fn parse_ratio(var: &str, raw: &str) -> Result<f64, SamplerSpecError> {
    match raw.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(SamplerSpecError::InvalidRatio {
            var: var.to_owned(),
            value: raw.to_owned(),
        }),
    }
}

/// Parses the sampler `value` read from `var`. `arg` is the separate ratio setting, as
/// `(variable, raw text)`: read (and checked) only when the sampler takes a ratio and `value` has
/// no inline `=ratio`, which wins over it.
pub fn parse_sampler(
    var: &str,
    value: &str,
    arg: Option<(&str, &str)>,
) -> Result<SamplerSpec, SamplerSpecError> {
    let (name, inline) = match value.split_once('=') {
        Some((name, ratio)) => (name, Some(ratio)),
        None => (value, None),
    };
    let unknown = || SamplerSpecError::UnknownSampler {
        var: var.to_owned(),
        value: value.to_owned(),
    };
    let name = name.trim();
    // Names are ASCII: anything longer than the longest cannot match, and is not lower-cased.
    if name.len() > "parentbased_traceidratio".len() {
        return Err(unknown());
    }
    let name = name.to_ascii_lowercase();
    let ratio = || -> Result<f64, SamplerSpecError> {
        match (inline, arg) {
            (Some(raw), _) => parse_ratio(var, raw).map_err(|_| SamplerSpecError::InvalidRatio {
                var: var.to_owned(),
                value: value.to_owned(),
            }),
            (None, Some((arg_var, raw))) => parse_ratio(arg_var, raw),
            (None, None) => Ok(1.0),
        }
    };
    let spec = match name.as_str() {
        "always_on" => SamplerSpec::AlwaysOn,
        "always_off" => SamplerSpec::AlwaysOff,
        "traceidratio" => SamplerSpec::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerSpec::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerSpec::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerSpec::ParentBasedTraceIdRatio(ratio()?),
        _ => return Err(unknown()),
    };
    if inline.is_some() && spec.ratio().is_none() {
        return Err(SamplerSpecError::UnexpectedRatio {
            var: var.to_owned(),
            value: value.to_owned(),
            name: spec.name(),
        });
    }
    Ok(spec)
}

/// Reads the sampler from variables looked up through `get` (the process env in production),
/// by the rules of the module docs.
pub fn sampler_spec_from(
    get: impl Fn(&str) -> Option<String>,
) -> Result<SamplerSpec, SamplerSpecError> {
    let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let (var, value, arg_vars) = match (non_empty(SAMPLER_VAR), non_empty(LEGACY_SAMPLER_VAR)) {
        (Some(v), _) => (SAMPLER_VAR, v, [SAMPLER_ARG_VAR, LEGACY_SAMPLER_ARG_VAR]),
        (None, Some(v)) => (
            LEGACY_SAMPLER_VAR,
            v,
            [LEGACY_SAMPLER_ARG_VAR, SAMPLER_ARG_VAR],
        ),
        (None, None) => (
            SAMPLER_VAR,
            DEFAULT_SAMPLER.to_owned(),
            [SAMPLER_ARG_VAR, LEGACY_SAMPLER_ARG_VAR],
        ),
    };
    let arg = arg_vars
        .iter()
        .find_map(|k| non_empty(k).map(|raw| (*k, raw)));
    parse_sampler(var, &value, arg.as_ref().map(|(k, raw)| (*k, raw.as_str())))
}

/// The sampler choice the process environment asks for.
pub fn sampler_spec_from_env() -> Result<SamplerSpec, SamplerSpecError> {
    sampler_spec_from(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(vars: &[(&str, &str)]) -> Result<SamplerSpec, SamplerSpecError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        sampler_spec_from(|k| m.get(k).cloned())
    }

    #[test]
    fn default_is_parentbased_always_on() {
        assert_eq!(spec(&[]).unwrap(), SamplerSpec::ParentBasedAlwaysOn);
        assert_eq!(
            spec(&[("OTEL_TRACES_SAMPLER", "  ")]).unwrap(),
            SamplerSpec::ParentBasedAlwaysOn
        );
    }

    #[test]
    fn every_name_parses_and_reports_its_name() {
        for (name, want) in [
            ("always_on", SamplerSpec::AlwaysOn),
            ("always_off", SamplerSpec::AlwaysOff),
            ("traceidratio", SamplerSpec::TraceIdRatio(0.25)),
            ("parentbased_always_on", SamplerSpec::ParentBasedAlwaysOn),
            ("parentbased_always_off", SamplerSpec::ParentBasedAlwaysOff),
            (
                "parentbased_traceidratio",
                SamplerSpec::ParentBasedTraceIdRatio(0.25),
            ),
        ] {
            let got = spec(&[
                ("OTEL_TRACE_SAMPLER", name),
                ("OTEL_TRACE_SAMPLER_ARG", "0.25"),
            ])
            .unwrap();
            assert_eq!(got, want, "{name}");
            assert_eq!(got.name(), name);
        }
        assert_eq!(
            spec(&[("OTEL_TRACES_SAMPLER", " ParentBased_TraceIdRatio ")]).unwrap(),
            SamplerSpec::ParentBasedTraceIdRatio(1.0)
        );
    }

    #[test]
    fn plural_form_wins_with_its_own_arg_then_the_other_spelling() {
        let got = spec(&[
            ("OTEL_TRACE_SAMPLER", "always_off"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACE_SAMPLER_ARG", "0.9"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ])
        .unwrap();
        assert_eq!(got, SamplerSpec::TraceIdRatio(0.1));
        let got = spec(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACE_SAMPLER_ARG", "0.5"),
        ])
        .unwrap();
        assert_eq!(got, SamplerSpec::TraceIdRatio(0.5));
    }

    #[test]
    fn inline_ratio_wins_and_the_arg_variable_is_not_read() {
        let got = spec(&[
            ("OTEL_TRACE_SAMPLER", "traceidratio=0.1"),
            ("OTEL_TRACE_SAMPLER_ARG", "not even a number"),
        ])
        .unwrap();
        assert_eq!(got, SamplerSpec::TraceIdRatio(0.1));
        assert_eq!(
            parse_sampler("s", " ParentBased_TraceIdRatio = 0.25 ", Some(("a", "1.0"))),
            Ok(SamplerSpec::ParentBasedTraceIdRatio(0.25))
        );
    }

    #[test]
    fn the_arg_variable_is_only_read_for_ratio_samplers() {
        assert_eq!(
            spec(&[
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ]),
            Ok(SamplerSpec::AlwaysOn)
        );
    }

    #[test]
    fn unknown_name_is_an_error_naming_the_variable_and_the_choices() {
        let err = spec(&[("OTEL_TRACE_SAMPLER", "sometimes")]).unwrap_err();
        assert_eq!(err.var(), "OTEL_TRACE_SAMPLER");
        let msg = err.to_string();
        assert!(
            msg.starts_with("OTEL_TRACE_SAMPLER='sometimes' is not"),
            "{msg}"
        );
        for name in SAMPLER_NAMES {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
    }

    #[test]
    fn bad_ratios_are_errors_naming_where_they_came_from() {
        for bad in ["1.5", "-0.1", "half", "NaN", "inf", ""] {
            let err = spec(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", bad),
            ]);
            if bad.is_empty() {
                // Blank is unset: the default ratio.
                assert_eq!(err, Ok(SamplerSpec::TraceIdRatio(1.0)));
                continue;
            }
            let err = err.unwrap_err();
            assert!(
                matches!(&err, SamplerSpecError::InvalidRatio { var, .. } if var == "OTEL_TRACES_SAMPLER_ARG"),
                "{bad}: {err}"
            );
            let err = spec(&[("OTEL_TRACES_SAMPLER", &format!("traceidratio={bad}"))]).unwrap_err();
            assert!(
                matches!(&err, SamplerSpecError::InvalidRatio { var, .. } if var == "OTEL_TRACES_SAMPLER"),
                "{bad}: {err}"
            );
        }
        let err = spec(&[("OTEL_TRACES_SAMPLER", "always_on=0.5")]).unwrap_err();
        assert!(
            matches!(err, SamplerSpecError::UnexpectedRatio { .. }),
            "{err}"
        );
    }

    #[test]
    fn hostile_values_are_quoted_escaped_and_refused() {
        let long = "x".repeat(100_000);
        let err = parse_sampler("V", &long, None).unwrap_err();
        assert!(matches!(err, SamplerSpecError::UnknownSampler { .. }));
        assert!(err.to_string().len() < 600, "{err}");
        let err = parse_sampler("V", "on\n'\u{7}", None)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(r"V='on\n\'\u{7}' is not"), "{err}");
    }
}

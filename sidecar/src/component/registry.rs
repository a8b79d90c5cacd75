//! The component registry handed to the config loader, and the loaded configuration: every
//! component's checked spec by id, plus the `service` section.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::Value;

use super::{ExporterSpec, ExtensionSpec, Factory, ProcessorSpec, ReceiverSpec};
use crate::config::expand::key_text;
use crate::config::{
    failed_ids, ComponentId, ComponentYaml, ConfigError, ConfigErrors, Document, ParseCtx,
    ServiceConfig,
};

/// The component types a config may name, by section. Assembled above the components (see
/// the top-level `load` module), so this layer never names one.
pub struct Registry {
    pub receivers: &'static [Factory<dyn ReceiverSpec>],
    pub processors: &'static [Factory<dyn ProcessorSpec>],
    pub exporters: &'static [Factory<dyn ExporterSpec>],
    pub extensions: &'static [Factory<dyn ExtensionSpec>],
}

/// A loaded, validated configuration.
pub struct Config {
    pub receivers: BTreeMap<ComponentId, Box<dyn ReceiverSpec>>,
    pub processors: BTreeMap<ComponentId, Box<dyn ProcessorSpec>>,
    pub exporters: BTreeMap<ComponentId, Box<dyn ExporterSpec>>,
    pub extensions: BTreeMap<ComponentId, Box<dyn ExtensionSpec>>,
    pub service: ServiceConfig,
    document: Document,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("receivers", &self.receivers.keys().collect::<Vec<_>>())
            .field("processors", &self.processors.keys().collect::<Vec<_>>())
            .field("exporters", &self.exporters.keys().collect::<Vec<_>>())
            .field("extensions", &self.extensions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Config {
    /// Parses, expands and validates a YAML document against the component types of
    /// `registry`; every problem found is reported.
    pub fn from_yaml_with(
        registry: &Registry,
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let document = Document::parse(text, lookup, &mut errors)?;
        let ctx = ParseCtx {
            origins: &document.origins,
            lookup,
        };
        let mut sections = Sections {
            document: &document,
            ctx: &ctx,
            errors: &mut errors,
        };
        let receivers = sections.parse("receivers", registry.receivers);
        let processors = sections.parse("processors", registry.processors);
        let exporters = sections.parse("exporters", registry.exporters);
        let extensions = sections.parse("extensions", registry.extensions);
        let service = document.service(&mut errors);
        let failed = failed_ids(&errors);
        let defined = |section: &str, id: &ComponentId| match section {
            "receivers" => receivers.contains_key(id),
            "processors" => processors.contains_key(id),
            "exporters" => exporters.contains_key(id),
            "extensions" => extensions.contains_key(id),
            _ => false,
        };
        service.validate(&defined, &failed, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            receivers,
            processors,
            exporters,
            extensions,
            service,
            document,
        })
    }

    /// Reads and validates a config file with the process environment.
    pub fn load_file_with(
        registry: &Registry,
        path: &std::path::Path,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::at(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        Config::from_yaml_with(registry, &text, &|k| std::env::var(k).ok())
    }

    /// The env-expanded document, for `print-config`.
    pub fn expanded(&self) -> &Value {
        &self.document.expanded
    }

    /// The expanded document with secrets replaced by `<redacted>`.
    pub fn redacted_yaml(&self) -> String {
        self.document.redacted_yaml()
    }
}

/// What parsing one component section needs; problems are collected, not returned.
struct Sections<'a, 'c> {
    document: &'a Document,
    ctx: &'a ParseCtx<'c>,
    errors: &'a mut Vec<ConfigError>,
}

impl Sections<'_, '_> {
    /// The components of section `name`, each parsed by the factory of its type.
    fn parse<S: ?Sized>(
        &mut self,
        name: &str,
        factories: &[Factory<S>],
    ) -> BTreeMap<ComponentId, Box<S>> {
        parse_section(
            &self.document.section(name),
            name,
            factories,
            self.ctx,
            self.errors,
        )
    }
}

fn parse_section<S: ?Sized>(
    section: &Value,
    name: &str,
    factories: &[Factory<S>],
    ctx: &ParseCtx<'_>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<ComponentId, Box<S>> {
    let mut out = BTreeMap::new();
    let map = match section {
        Value::Null => return out,
        Value::Mapping(m) => m,
        _ => {
            errors.push(ConfigError::at(
                name,
                "expected a mapping of component ids to their settings",
            ));
            return out;
        }
    };
    for (k, v) in map {
        let key = key_text(k);
        let path = format!("{name}.{key}");
        let Some(id) = ComponentId::parse(&key) else {
            errors.push(ConfigError::at(
                path,
                "invalid component id; expected `type` or `type/name`",
            ));
            continue;
        };
        match factories.iter().find(|f| f.kind == id.kind) {
            Some(f) => match (f.parse)(&ComponentYaml {
                id: &id,
                value: v,
                path: &path,
                ctx,
            }) {
                Ok(spec) => {
                    out.insert(id, spec);
                }
                Err(e) => errors.push(e),
            },
            None => errors.push(ConfigError::at(
                path,
                format!(
                    "unknown {} type {:?}; available: {}",
                    name.trim_end_matches('s'),
                    id.kind,
                    factories
                        .iter()
                        .map(|f| f.kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    out
}

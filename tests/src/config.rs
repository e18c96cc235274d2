//! Agent configuration files for tests, built instead of `format!`-ed: [`ConfigBuilder`] (the
//! `[agent]` table and the services), [`ServiceBuilder`] (one `[[service]]` with its
//! `[service.health]` table and backends) and [`BackendBuilder`].
//!
//! The builders only write TOML text: every key is the agent's own spelling and every default is
//! the agent's (a key not set is not written), so a built file means exactly what the hand-written
//! one did. [`ConfigBuilder::parse`] runs the agent's parser on it for in-process agents.

use std::fmt::Write as _;

use crate::topo::BACKENDS;

/// A TOML value as written after `key = `.
fn quoted(value: &str) -> String {
    format!("\"{value}\"")
}

/// Ordered `key = value` lines (values already TOML literals).
#[derive(Clone, Debug, Default)]
struct Table(Vec<(String, String)>);

impl Table {
    /// Sets `key` (replacing an earlier value, keeping its place).
    fn set(&mut self, key: &str, literal: String) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = literal,
            None => self.0.push((key.to_owned(), literal)),
        }
    }

    fn write(&self, out: &mut String) {
        for (key, value) in &self.0 {
            let _ = writeln!(out, "{key} = {value}");
        }
    }
}

/// A whole configuration file: `[agent]` settings, then the services in order.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    agent: Table,
    services: Vec<ServiceBuilder>,
    /// Whole tables written after the services (e.g. `[announce]`), verbatim.
    tables: Vec<String>,
}

impl ConfigBuilder {
    /// An empty configuration (no `[agent]` table, no services).
    pub fn new() -> Self {
        Self::default()
    }

    /// `[agent] control = "<path>"`: the control socket.
    pub fn control(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.agent.set("control", quoted(&path.as_ref().display().to_string()));
        self
    }

    /// `[agent] max-flows = n`: the connection table's size.
    pub fn max_flows(mut self, n: u32) -> Self {
        self.agent.set("max-flows", n.to_string());
        self
    }

    /// `[agent] key = value`, `value` written as TOML (quote strings yourself).
    pub fn agent(mut self, key: &str, value: &str) -> Self {
        self.agent.set(key, value.to_owned());
        self
    }

    /// Appends a service.
    pub fn service(mut self, service: ServiceBuilder) -> Self {
        self.services.push(service);
        self
    }

    /// Appends a whole top-level table (such as `[announce]` with its neighbours), written
    /// verbatim after the services.
    pub fn table(mut self, text: &str) -> Self {
        self.tables.push(text.to_owned());
        self
    }

    /// The service named `name`, to change it in place (panics when there is none).
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceBuilder {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name:?} in the configuration"))
    }

    /// Every service, to change them all.
    pub fn services_mut(&mut self) -> impl Iterator<Item = &mut ServiceBuilder> {
        self.services.iter_mut()
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if !self.agent.0.is_empty() {
            out.push_str("[agent]\n");
            self.agent.write(&mut out);
        }
        for service in &self.services {
            if !out.is_empty() {
                out.push('\n');
            }
            service.write(&mut out);
        }
        for table in &self.tables {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(table);
            if !table.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Writes the TOML text to `path` (panics on failure).
    pub fn write_to(&self, path: impl AsRef<std::path::Path>) {
        let path = path.as_ref();
        std::fs::write(path, self.to_toml())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// The agent's own reading of the text (`file` names it in errors); panics when refused.
    pub fn parse(&self, file: &str) -> sshlb::config::Config {
        sshlb::config::parse(file, &self.to_toml()).unwrap_or_else(|e| {
            panic!("the built configuration was refused: {e}\n{}", self.to_toml())
        })
    }
}

/// One `[[service]]`: its keys, its `[service.health]` table, raw extra text, its backends.
#[derive(Clone, Debug)]
pub struct ServiceBuilder {
    name: String,
    keys: Table,
    /// Written after the keys, before `[service.health]` (e.g. lists, a `[service.limit]`).
    extra: Vec<String>,
    health: Table,
    backends: Vec<BackendBuilder>,
}

impl ServiceBuilder {
    /// `name`, `vip`, `port`: what every service has.
    pub fn new(name: &str, vip: &str, port: u16) -> Self {
        let mut keys = Table::default();
        keys.set("name", quoted(name));
        keys.set("vip", quoted(vip));
        keys.set("port", port.to_string());
        Self {
            name: name.to_owned(),
            keys,
            extra: Vec::new(),
            health: Table::default(),
            backends: Vec::new(),
        }
    }

    /// `mode = "nat" | "dsr"`.
    pub fn mode(mut self, mode: &str) -> Self {
        self.keys.set("mode", quoted(mode));
        self
    }

    /// `ring-size = n`.
    pub fn ring_size(mut self, n: u32) -> Self {
        self.keys.set("ring-size", n.to_string());
        self
    }

    /// Raw TOML lines written after the service's keys (host-key policy, lists, a
    /// `[service.limit]` table): for settings the tests pass through verbatim.
    pub fn raw(mut self, text: &str) -> Self {
        self.extra.push(text.to_owned());
        self
    }

    /// `[service.health] key = "value"` (a string setting: `interval`, `timeout`, `expect`, ...).
    pub fn health(mut self, key: &str, value: &str) -> Self {
        self.health.set(key, quoted(value));
        self
    }

    /// Health checks every 100 ms that only connect (`expect = ""`): the topology's backends
    /// are echo servers, which send no SSH banner.
    pub fn fast_connect_checks(self) -> Self {
        self.health("interval", "100ms").health("expect", "")
    }

    /// `[service.health] key = n` (a count: `rise`, `fall`).
    pub fn health_count(mut self, key: &str, n: u32) -> Self {
        self.health.set(key, n.to_string());
        self
    }

    /// In-place form of [`Self::health`].
    pub fn set_health(&mut self, key: &str, value: &str) -> &mut Self {
        self.health.set(key, quoted(value));
        self
    }

    /// In-place form of [`Self::health_count`].
    pub fn set_health_count(&mut self, key: &str, n: u32) -> &mut Self {
        self.health.set(key, n.to_string());
        self
    }

    /// Appends a backend.
    pub fn backend(mut self, backend: BackendBuilder) -> Self {
        self.backends.push(backend);
        self
    }

    /// The topology's three backends ([`BACKENDS`]) on their IPv4 (`v6` false) or IPv6
    /// addresses, each shaped by `each(index, backend)`.
    pub fn topo_backends(
        mut self,
        v6: bool,
        mut each: impl FnMut(usize, BackendBuilder) -> BackendBuilder,
    ) -> Self {
        for (i, (name, a4, a6)) in BACKENDS.iter().enumerate() {
            let backend = BackendBuilder::new(name, if v6 { a6 } else { a4 });
            self.backends.push(each(i, backend));
        }
        self
    }

    /// The backend named `name`, to change it in place (panics when there is none).
    pub fn backend_mut(&mut self, name: &str) -> &mut BackendBuilder {
        let service = self.name.clone();
        self.backends
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name:?} in service {service:?}"))
    }

    fn write(&self, out: &mut String) {
        out.push_str("[[service]]\n");
        self.keys.write(out);
        for extra in &self.extra {
            out.push_str(extra);
            out.push('\n');
        }
        if !self.health.0.is_empty() {
            out.push_str("[service.health]\n");
            self.health.write(out);
        }
        for backend in &self.backends {
            out.push_str("[[service.backend]]\n");
            backend.keys.write(out);
        }
    }
}

/// One `[[service.backend]]`.
#[derive(Clone, Debug)]
pub struct BackendBuilder {
    name: String,
    keys: Table,
}

impl BackendBuilder {
    /// `name` and `address`.
    pub fn new(name: &str, address: &str) -> Self {
        let mut keys = Table::default();
        keys.set("name", quoted(name));
        keys.set("address", quoted(address));
        Self { name: name.to_owned(), keys }
    }

    /// `port = n` (defaults to the service's).
    pub fn port(mut self, port: u16) -> Self {
        self.keys.set("port", port.to_string());
        self
    }

    /// `weight = n`.
    pub fn weight(mut self, weight: u32) -> Self {
        self.keys.set("weight", weight.to_string());
        self
    }

    /// `state = "active" | "disabled" | ...`.
    pub fn state(mut self, state: &str) -> Self {
        self.keys.set("state", quoted(state));
        self
    }

    /// `group = "<name>"` (blue-green).
    pub fn group(mut self, group: &str) -> Self {
        self.keys.set("group", quoted(group));
        self
    }

    /// In-place form of [`Self::group`].
    pub fn set_group(&mut self, group: &str) -> &mut Self {
        self.keys.set("group", quoted(group));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_agents_keys_in_order() {
        let text = ConfigBuilder::new()
            .control("/run/x.sock")
            .service(
                ServiceBuilder::new("git", "198.18.0.100", 22)
                    .ring_size(4093)
                    .health("interval", "100ms")
                    .health_count("rise", 2)
                    .backend(BackendBuilder::new("b1", "198.18.0.11").weight(3).group("blue")),
            )
            .to_toml();
        assert_eq!(
            text,
            "[agent]\ncontrol = \"/run/x.sock\"\n\n[[service]]\nname = \"git\"\n\
             vip = \"198.18.0.100\"\nport = 22\nring-size = 4093\n[service.health]\n\
             interval = \"100ms\"\nrise = 2\n[[service.backend]]\nname = \"b1\"\n\
             address = \"198.18.0.11\"\nweight = 3\ngroup = \"blue\"\n"
        );
    }
}

//! The file as written: serde structs mirroring the TOML, each value kept with its span so
//! validation can name the line. No checks here beyond TOML types and unknown keys.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawFile {
    pub(super) agent: Option<RawAgent>,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
    pub(super) announce: Option<super::announce::RawAnnounce>,
}

/// `[agent]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAgent {
    pub(super) metrics: Option<String>,
    pub(super) control: Option<String>,
    pub(super) nat_v4: Option<Spanned<String>>,
    pub(super) nat_v6: Option<Spanned<String>>,
    pub(super) nat_ports: Option<Spanned<String>>,
    pub(super) max_flows: Option<Spanned<u32>>,
    pub(super) syn_timeout: Option<Spanned<String>>,
    pub(super) established_timeout: Option<Spanned<String>>,
    pub(super) fin_timeout: Option<Spanned<String>>,
    pub(super) closed_timeout: Option<Spanned<String>>,
    pub(super) gue_port: Option<Spanned<u16>>,
    pub(super) tunnel_mtu: Option<Spanned<u16>>,
}

/// `[[service]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) vip: Spanned<String>,
    pub(super) port: Spanned<u16>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) encap: Option<Spanned<String>>,
    pub(super) affinity: Option<Spanned<String>>,
    pub(super) ring_size: Option<Spanned<u32>>,
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
    pub(super) limit: Option<RawLimit>,
    #[serde(default)]
    pub(super) host_keys: Vec<Spanned<String>>,
    pub(super) host_key_policy: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
}

/// `[service.limit]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimit {
    pub(super) rate: Spanned<String>,
    pub(super) burst: Option<Spanned<u32>>,
    pub(super) ipv4_prefix: Option<Spanned<u8>>,
    pub(super) ipv6_prefix: Option<Spanned<u8>>,
}

/// `[service.health]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHealth {
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) expect: Option<Spanned<String>>,
    pub(super) host_key_interval: Option<Spanned<String>>,
}

/// `[[service.backend]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawBackend {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) weight: Option<Spanned<u32>>,
    pub(super) state: Option<Spanned<String>>,
    pub(super) group: Option<String>,
}

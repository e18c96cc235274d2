//! `sshlb-agent doctor IFACE`: the host and interface checks that caught real users, each pass,
//! warn or fail with the fix. [`checks`] (host and interface) and [`network`] (the host's
//! network against the configuration) decide from gathered facts (sans-IO, unit-tested);
//! [`probe`] gathers the host's facts (kernel, BTF, bpffs, the interface through ioctls in the
//! caller's network namespace, sysctls, where addresses live) and [`reach`] the backends' (banner
//! and host keys, in parallel under one deadline); [`report`] holds the outcomes. `up` runs the
//! local checks first and refuses on a failed one with the same words ([`Report::fatal`]); it
//! logs the warnings.

pub mod checks;
pub mod network;
pub mod probe;
pub mod reach;
pub mod report;

pub use checks::{check, Check, Facts, IfaceFacts, Level, Report, MAX_NATIVE_MTU};
pub use probe::facts;

use crate::config::Config;

/// The checks that need only this host: [`check`]'s, then the sysctls and the reverse-path
/// filter, and with a configuration where each VIP's packets arrive. Fast (reads, and a route
/// lookup per VIP no interface holds): `up` runs these.
pub fn local_report(
    facts: &Facts,
    mode: crate::loader::AttachMode,
    config: Option<&Config>,
) -> Report {
    let mut report = check(facts, mode);
    if facts.iface.is_none() {
        return report;
    }
    let iface = &facts.iface_name;
    let ipv6 = config.is_some_and(|c| c.services.iter().any(|s| s.vip.is_ipv6()));
    report.checks.push(network::sysctl_check(iface, ipv6, &facts.sysctls));
    let Some(config) = config else {
        report.checks.push(network::rp_filter_check(iface, &facts.sysctls, &[]));
        return report;
    };
    let nat: Vec<std::net::IpAddr> = crate::daemon::dataplane_config(config, iface)
        .map(|d| {
            [
                crate::daemon::host::check_source(Some(&d), false),
                crate::daemon::host::check_source(Some(&d), true),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    let sources = network::own_sources(config, &nat);
    let addrs: Vec<std::net::IpAddr> = sources.iter().map(|(_, a)| *a).collect();
    let located = probe::addr_facts(&addrs);
    let labelled: Vec<(String, checks::AddrFacts)> =
        sources.into_iter().map(|(l, _)| l).zip(located).collect();
    report.checks.push(network::rp_filter_check(iface, &facts.sysctls, &labelled));
    let vips = probe::addr_facts(&network::vips(config));
    report.checks.extend(network::vip_checks(iface, config, &vips, &facts.sysctls));
    report
}

/// The checks that talk to the backends (banner from the NAT address, host keys), bounded by
/// [`reach::DEADLINE`]: `doctor` runs these, `up` does not (see the README: its health checker
/// and host-key scanner do the same from the first second, and a start must not wait on them).
pub fn backend_report(config: &Config, iface: &str) -> Vec<Check> {
    let backends = reach::probe(config, iface, reach::DEADLINE);
    let mut checks = network::backend_checks(&backends);
    checks.extend(network::host_key_checks(config, &backends));
    checks
}

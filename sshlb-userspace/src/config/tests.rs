//! The file format end to end: valid files parse to the expected model, invalid ones are refused
//! with the file, line and field named.

use std::time::Duration;

use super::*;

const GOOD: &str = r#"
[agent]
metrics = "127.0.0.1:9734"
nat-ports = "20000-29999"

[[service]]
name = "git"
vip = "198.18.0.100"
port = 22
mode = "nat"
affinity = "flow"

[service.health]
interval = "250ms"

[[service.backend]]
name = "b1"
address = "198.18.1.11"
port = 22
weight = 100
state = "active"
group = "blue"

[[service.backend]]
name = "b2"
address = "198.18.1.12"
weight = 0

[[service]]
name = "bastion6"
vip = "fd00:1::100"
port = 2222
mode = "dsr"
affinity = "source"
ring-size = 4093

[[service.backend]]
name = "j1"
address = "fd00:1::21"
port = 2222
state = "drain"
"#;

#[test]
fn parses_the_documented_example() {
    let cfg = parse("sshlb.toml", GOOD).expect("valid");
    assert_eq!(cfg.agent.nat_ports, (20000, 29999));
    assert_eq!(cfg.services.len(), 2);
    let git = &cfg.services[0];
    assert_eq!((git.mode, git.affinity, git.ring_size), (Mode::Nat, Affinity::Flow, 65537));
    assert_eq!(git.backends[1].port, 22, "port defaults to 22");
    assert_eq!(git.backends[1].weight, 0);
    assert_eq!(git.backends[0].group.as_deref(), Some("blue"));
    let b = &cfg.services[1];
    assert_eq!((b.mode, b.affinity, b.ring_size), (Mode::Dsr, Affinity::Source, 4093));
    assert_eq!(b.backends[0].state, BackendState::Drain);
    assert_eq!(b.backends[0].ring_key(), "[fd00:1::21]:2222");
    assert_eq!(git.health.interval, Duration::from_millis(250));
    assert_eq!((git.health.rise, git.health.fall), (2, 3), "defaults");
    assert_eq!(git.health.expect, "SSH-2.0-");
}

#[test]
fn health_section_is_validated() {
    let cfg = parse(
        "h.toml",
        &GOOD.replace(
            "interval = \"250ms\"",
            "interval = \"2s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 5\nexpect = \"\"",
        ),
    )
    .expect("valid");
    let h = &cfg.services[0].health;
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_secs(2), Duration::from_millis(500), 1, 5)
    );
    assert_eq!(h.expect, "");
    let err = parse("h.toml", &GOOD.replace("interval = \"250ms\"", "interval = \"forever\""))
        .expect_err("bad");
    assert_eq!((err.line, err.field.as_str()), (14, "service[0].health.interval"), "{err}");
    let err = parse("h.toml", &GOOD.replace("interval = \"250ms\"", "rise = 0")).expect_err("bad");
    assert!(err.to_string().contains("service[0].health.rise: must be 1-100"), "{err}");
    let err = parse("h.toml", &GOOD.replace("interval = \"250ms\"", "intervall = \"1s\""))
        .expect_err("bad");
    assert!(err.to_string().contains("intervall"), "{err}");
}

/// One refused edit: `(from, to)` replaces the first `from` of the base file, and the error
/// must name `line` and `field` and say `words`.
type Refusal<'a> = ((&'a str, &'a str), usize, &'a str, &'a str);

/// Applies each edit to `base` (read as `file`) and checks the parser's error names the file,
/// line and field and explains itself.
fn assert_refused(file: &str, base: &str, cases: &[Refusal<'_>]) {
    for ((from, to), line, field, words) in cases {
        assert!(base.contains(from), "test edit {from:?} does not apply");
        let err = parse(file, &base.replacen(from, to, 1)).expect_err("must be refused");
        assert_eq!(err.file, file);
        assert_eq!((err.line, err.field.as_str()), (*line, *field), "{err}");
        assert!(err.to_string().contains(words), "{err} should say {words:?}");
    }
}

#[test]
fn every_error_names_file_line_and_field() {
    let cases: &[Refusal<'_>] = &[
        (("weight = 100", "wieght = 100"), 20, "wieght", "unknown field"),
        (
            ("address = \"198.18.1.11\"", "address = \"198.18.1.300\""),
            18,
            "service[0].backend[0].address",
            "not an IPv4 or IPv6",
        ),
        (
            ("address = \"198.18.1.12\"", "address = \"fd00::12\""),
            26,
            "service[0].backend[1].address",
            "different families",
        ),
        (
            ("mode = \"nat\"", "mode = \"ipip\""),
            10,
            "service[0].mode",
            "expected \"nat\", \"dsr\" or \"tunnel\"",
        ),
        (
            ("mode = \"nat\"", "mode = \"nat\"\nencap = \"gue\""),
            11,
            "service[0].encap",
            "applies to mode = \"tunnel\" only",
        ),
        (
            ("nat-ports = \"20000-29999\"", "tunnel-mtu = 1000"),
            4,
            "agent.tunnel-mtu",
            "from 1280 to 9216",
        ),
        (("nat-ports = \"20000-29999\"", "gue-port = 0"), 4, "agent.gue-port", "1-65535"),
        (
            ("affinity = \"flow\"", "affinity = \"sticky\""),
            11,
            "service[0].affinity",
            "\"flow\" or \"source\"",
        ),
        (
            ("state = \"active\"", "state = \"up\""),
            21,
            "service[0].backend[0].state",
            "\"active\", \"drain\"",
        ),
        (("weight = 100", "weight = 70000"), 20, "service[0].backend[0].weight", "0-65535"),
        (("ring-size = 4093", "ring-size = 4096"), 35, "service[1].ring-size", "must be a prime"),
        (("port = 2222\nstate", "port = 22\nstate"), 40, "service[1].backend[0].port", "dsr mode"),
        (
            ("name = \"bastion6\"", "name = \"git\""),
            30,
            "service[1].name",
            "used by another service",
        ),
        (
            ("nat-ports = \"20000-29999\"", "nat-ports = \"29999-20000\""),
            4,
            "agent.nat-ports",
            "FIRST-LAST",
        ),
        (("name = \"b2\"", "name = \"b1\""), 25, "service[0].backend[1].name", "appears twice"),
        (("port = 22\nmode", "port = 0\nmode"), 9, "service[0].port", "1-65535"),
        (
            ("vip = \"198.18.0.100\"", "vip = \"vip.example\""),
            8,
            "service[0].vip",
            "not an IPv4 or IPv6",
        ),
    ];
    assert_refused("sshlb.toml", GOOD, cases);
}

const PROTECTED: &str = r#"
[[service]]
name = "bastion"
vip = "198.18.0.100"
port = 22
allow = ["198.18.8.0/24", "198.18.9.7"]
deny = ["198.18.8.66/32"]
host-keys = ["SHA256:okrPfI6GQnKScC7PX6NR+WtCReGzkhWkTzBcJ7DQmOI"]
host-key-policy = "enforce"

[service.limit]
rate = "30/m"
burst = 5
ipv4-prefix = 24

[service.health]
host-key-interval = "5m"

[[service.backend]]
name = "j1"
address = "198.18.1.21"
"#;

#[test]
fn protection_settings_parse() {
    let cfg = parse("p.toml", PROTECTED).expect("valid");
    let s = &cfg.services[0];
    assert_eq!(s.acl.allow.len(), 2);
    assert_eq!(s.acl.allow[1].to_string(), "198.18.9.7/32");
    assert!(!s.acl.allows("198.18.8.66".parse().expect("ip")));
    let limit = s.limit.expect("limit");
    assert_eq!((limit.interval, limit.burst), (Duration::from_secs(2), 5));
    assert_eq!((limit.ipv4_prefix, limit.ipv6_prefix), (24, 64), "IPv6 defaults to /64");
    assert_eq!(s.host_key_policy, HostKeyPolicy::Enforce);
    assert_eq!(s.health.host_key_interval, Duration::from_secs(300));
    let plain = parse("g.toml", GOOD).expect("valid");
    assert!(plain.services[0].acl.is_empty() && plain.services[0].limit.is_none());
    assert_eq!(plain.services[0].host_key_policy, HostKeyPolicy::Warn);
    assert_eq!(plain.services[0].health.host_key_interval, Duration::from_secs(60));
}

#[test]
fn protection_errors_are_located_and_explained() {
    let cases: &[Refusal<'_>] = &[
        (
            ("\"198.18.8.0/24\"", "\"198.18.8.1/24\""),
            6,
            "service[0].allow[0]",
            "did you mean \"198.18.8.0/24\"",
        ),
        (("\"198.18.8.66/32\"", "\"fd00::66\""), 7, "service[0].deny[0]", "different families"),
        (("\"198.18.8.66/32\"", "\"198.18.9.7\""), 7, "service[0].deny[0]", "listed twice"),
        (("rate = \"30/m\"", "rate = \"30\""), 12, "service[0].limit.rate", "\"10/s\""),
        (("burst = 5", "burst = 0"), 13, "service[0].limit.burst", "1-100000"),
        (("ipv4-prefix = 24", "ipv4-prefix = 40"), 14, "service[0].limit.ipv4-prefix", "0-32"),
        (("SHA256:okrP", "MD5:okrP"), 8, "service[0].host-keys[0]", "ssh-keygen"),
        (("\"enforce\"", "\"strict\""), 9, "service[0].host-key-policy", "\"warn\" or \"enforce\""),
        (
            ("host-keys = [\"SHA256:okrPfI6GQnKScC7PX6NR+WtCReGzkhWkTzBcJ7DQmOI\"]", ""),
            9,
            "service[0].host-key-policy",
            "needs the expected fingerprints",
        ),
    ];
    assert_refused("p.toml", PROTECTED, cases);
}

#[test]
fn syntax_errors_are_located() {
    let err = parse("x.toml", "[[service]]\nname = \"a\"\nvip = \n").expect_err("syntax");
    assert_eq!(err.line, 3, "{err}");
    assert!(err.to_string().starts_with("x.toml:3: "), "{err}");
}

#[test]
fn missing_required_field_is_named() {
    let err = parse("x.toml", "[[service]]\nname = \"a\"\nport = 22\n").expect_err("no vip");
    assert!(err.to_string().contains("vip"), "{err}");
}

/// Every enum's table: each spelling parses to the value that prints it, the default is the
/// first row, and an unknown spelling's error lists every choice.
fn table_round_trips<T>(all: &[(T, &str)], spellings: &[&str])
where
    T: Copy
        + std::fmt::Debug
        + PartialEq
        + Default
        + std::fmt::Display
        + std::str::FromStr<Err = UnknownChoice>,
{
    assert_eq!(all.iter().map(|(_, s)| *s).collect::<Vec<_>>(), spellings);
    assert_eq!(T::default(), all[0].0, "the default is listed first");
    for &(value, text) in all {
        assert_eq!(text.parse::<T>(), Ok(value), "{text:?}");
        assert_eq!(value.to_string(), text);
    }
    let err = "nonsense".parse::<T>().expect_err("unknown spelling");
    assert_eq!(err.choices, spellings);
    for text in spellings {
        assert!(err.to_string().contains(&format!("{text:?}")), "{err} should list {text:?}");
    }
}

#[test]
fn enum_spellings_round_trip_and_errors_list_every_choice() {
    table_round_trips(Mode::ALL, &["nat", "dsr", "tunnel"]);
    table_round_trips(Encap::ALL, &["ipip", "gue"]);
    table_round_trips(Affinity::ALL, &["flow", "source"]);
    table_round_trips(BackendState::ALL, &["active", "drain", "disabled"]);
    table_round_trips(HostKeyPolicy::ALL, &["warn", "enforce"]);
    table_round_trips(AnnounceMode::ALL, &["none", "bgp"]);
    assert_eq!(Mode::Dsr.as_str(), "dsr");
    assert_eq!(
        "up".parse::<BackendState>().expect_err("unknown").to_string(),
        r#""up": expected "active", "drain" or "disabled""#
    );
}

#[test]
fn tunnel_services_take_an_encapsulation_and_keep_the_service_port() {
    let text = r#"
[agent]
gue-port = 7000
tunnel-mtu = 9000

[[service]]
name = "git"
vip = "198.18.0.100"
port = 22
mode = "tunnel"
encap = "gue"

[[service.backend]]
name = "far"
address = "198.19.5.10"
"#;
    let cfg = parse("sshlb.toml", text).expect("a tunnel service parses");
    assert_eq!((cfg.agent.gue_port, cfg.agent.tunnel_mtu), (7000, Some(9000)));
    assert_eq!((cfg.services[0].mode, cfg.services[0].encap), (Mode::Tunnel, Encap::Gue));
    let defaults = parse("sshlb.toml", &text.replace("encap = \"gue\"\n", "")).expect("parses");
    assert_eq!(defaults.services[0].encap, Encap::Ipip, "ipip is the default encapsulation");
    let err = parse("sshlb.toml", &text.replace("\"198.19.5.10\"", "\"198.19.5.10\"\nport = 2222"))
        .expect_err("a tunnel backend on another port");
    assert!(
        err.to_string().contains("in tunnel mode the backend answers on the service port"),
        "{err}"
    );
}

const ANNOUNCED: &str = r#"
[[service]]
name = "git"
vip = "198.18.0.100"
port = 22

[announce]
mode = "bgp"
min-backends = 2
local-as = 65001
router-id = "198.18.2.11"
bfd-interval = "50ms"
bfd-multiplier = 4
bird-socket = "/run/b1/bird.ctl"
include-file = "/run/b1/sshlb.conf"

[[announce.neighbor]]
address = "198.18.2.1"
as = 65000

[[announce.neighbor]]
address = "fd00:2::1"
as = 65000
"#;

#[test]
fn announce_section_parses_and_defaults_to_off() {
    let cfg = parse("a.toml", ANNOUNCED).expect("valid");
    let a = &cfg.announce;
    assert_eq!((a.mode, a.min_backends, a.local_as), (AnnounceMode::Bgp, 2, Some(65001)));
    assert_eq!(a.router_id, Some("198.18.2.11".parse().expect("ip")));
    assert_eq!(a.neighbors.len(), 2);
    assert_eq!(
        (a.neighbors[1].address.to_string(), a.neighbors[1].remote_as),
        ("fd00:2::1".into(), 65000)
    );
    assert_eq!(a.bfd, Bfd { enabled: true, interval: Duration::from_millis(50), multiplier: 4 });
    assert_eq!(
        (a.bird_socket.as_str(), a.include_file.as_str()),
        ("/run/b1/bird.ctl", "/run/b1/sshlb.conf")
    );
    let plain = parse("g.toml", GOOD).expect("valid");
    assert_eq!(plain.announce, Announce::default());
    assert_eq!(plain.announce.mode, AnnounceMode::None);
    assert_eq!(plain.announce.min_backends, 1);
}

#[test]
fn announce_errors_are_located_and_explained() {
    let cases: &[Refusal<'_>] = &[
        (("mode = \"bgp\"", "mode = \"ospf\""), 8, "announce.mode", "\"none\" or \"bgp\""),
        (("min-backends = 2", "min-backends = 0"), 9, "announce.min-backends", "1-1024"),
        (("local-as = 65001", "local-as = 0"), 10, "announce.local-as", "must be 1-"),
        (("local-as = 65001", ""), 18, "announce.local-as", "local-as"),
        (("\"198.18.2.11\"", "\"fd00::1\""), 11, "announce.router-id", "not an IPv4"),
        (("\"50ms\"", "\"5ms\""), 12, "announce.bfd-interval", "\"10ms\" and \"10s\""),
        (("bfd-multiplier = 4", "bfd-multiplier = 0"), 13, "announce.bfd-multiplier", "1-255"),
        (
            ("\"198.18.2.1\"", "\"router\""),
            18,
            "announce.neighbor[0].address",
            "not an IPv4 or IPv6",
        ),
        (
            ("\"fd00:2::1\"", "\"198.18.2.1\""),
            22,
            "announce.neighbor[1].address",
            "already a neighbor",
        ),
        (("as = 65000", "as = 0"), 19, "announce.neighbor[0].as", "must be 1-"),
        (("bfd-multiplier = 4", "bfd-multipler = 4"), 13, "bfd-multipler", "unknown field"),
    ];
    assert_refused("a.toml", ANNOUNCED, cases);
}

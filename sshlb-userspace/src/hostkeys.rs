//! Host-key consistency: every backend behind one name must present the same host keys, or a
//! client that lands on a different backend is told "REMOTE HOST IDENTIFICATION HAS CHANGED"
//! (and learns to ignore the warning that protects it from a real man-in-the-middle).
//!
//! [`scan`] performs a real SSH key exchange (russh; the server's signature over the exchange
//! hash is verified, so the backend proves it holds the private key) once per host-key type we
//! know, and records each key's SHA256 fingerprint as `ssh-keygen -l` prints it. It stops after
//! the key exchange, before authentication, and says goodbye with a disconnect message, so sshd
//! logs one line per scan. [`judge`] (sans-IO) compares a service's backends.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use russh::{
    client,
    keys::{Algorithm, EcdsaCurve, HashAlg, PublicKey, PublicKeyOrCertificate},
    AlgorithmKind, Disconnect, Preferred,
};
use serde::{Deserialize, Serialize};

/// One host key a backend presented.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostKey {
    /// Key type, e.g. `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `SHA256:` + unpadded base64, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// The host-key algorithms a scan asks for, one key exchange each. RSA is asked for with
/// SHA-512 signatures; the key is the same whichever hash signs.
fn algorithms() -> [Algorithm; 5] {
    [
        Algorithm::Ed25519,
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
        Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
    ]
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The key exchange failed for a reason other than "no such key type".
    #[error("{kind} key exchange: {message}")]
    Ssh {
        /// The host-key type asked for.
        kind: String,
        /// russh's reason.
        message: String,
    },
    /// A key exchange did not finish in time.
    #[error("{kind} key exchange took longer than {timeout:?}")]
    Timeout {
        /// The host-key type asked for.
        kind: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server offered none of the key types we know.
    #[error("offers no host key of a known type (server offers: {0})")]
    NoKnownKey(String),
}

/// Records the server's host key; accepts it so the exchange completes (the key is judged by
/// the agent, not by this connection).
struct Recorder(Arc<Mutex<Option<PublicKey>>>);

impl client::Handler for Recorder {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let PublicKeyOrCertificate::PublicKey { key, .. } = key {
            if let Ok(mut slot) = self.0.lock() {
                *slot = Some(key.clone());
            }
        }
        Ok(true)
    }
}

/// Scans `addr`'s host keys from `source`, one key exchange per known type, in sequence (never
/// more than one connection at a time to a backend); `timeout` bounds each exchange.
pub async fn scan(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<HostKey>, ScanError> {
    let mut keys = Vec::new();
    let mut offered = String::new();
    for algorithm in algorithms() {
        let kind = algorithm.to_string();
        let exchange = exchange(addr, source, algorithm);
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(ScanError::Timeout { kind, timeout }),
            Ok(Ok(key)) => keys.push(HostKey {
                kind: key.algorithm().to_string(),
                fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            }),
            Ok(Err(Exchange::NotOffered(theirs))) => offered = theirs,
            Ok(Err(Exchange::Connect(e))) => return Err(ScanError::Connect(e)),
            Ok(Err(Exchange::Ssh(message))) => return Err(ScanError::Ssh { kind, message }),
        }
    }
    if keys.is_empty() {
        return Err(ScanError::NoKnownKey(offered));
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

enum Exchange {
    NotOffered(String),
    Connect(std::io::Error),
    Ssh(String),
}

async fn exchange(
    addr: SocketAddr,
    source: Option<IpAddr>,
    algorithm: Algorithm,
) -> Result<PublicKey, Exchange> {
    let stream = crate::health::connect_from(addr, source).await.map_err(Exchange::Connect)?;
    let config = client::Config {
        preferred: Preferred { key: Cow::Owned(vec![algorithm]), ..Preferred::default() },
        inactivity_timeout: Some(Duration::from_secs(30)),
        ..client::Config::default()
    };
    let slot = Arc::new(Mutex::new(None));
    let handle = client::connect_stream(Arc::new(config), stream, Recorder(slot.clone()))
        .await
        .map_err(|e| match e {
            russh::Error::NoCommonAlgo { kind: AlgorithmKind::Key, theirs, .. } => {
                Exchange::NotOffered(theirs.join(","))
            }
            other => Exchange::Ssh(other.to_string()),
        })?;
    let _ignored = handle.disconnect(Disconnect::ByApplication, "sshlb host-key check", "en").await;
    let key = slot.lock().ok().and_then(|mut s| s.take());
    key.ok_or_else(|| Exchange::Ssh("the server presented a certificate, not a key".to_owned()))
}

/// How one backend's keys compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not scanned successfully yet.
    Unknown,
    /// Consistent with the configured keys (or with the other backends).
    Match,
    /// Differs; the reason names what.
    Mismatch(String),
}

impl Verdict {
    /// `"match"`, `"mismatch"` or `"unknown"` (status and metrics).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Match => "match",
            Self::Mismatch(_) => "mismatch",
        }
    }
}

/// Judges each backend of one service. With `expected` fingerprints (the service's
/// `host-keys`), every key a backend presents must be among them. Without, the backends are
/// compared with each other: the key set most of them present is the reference and the odd ones
/// out are flagged; when no set has a strict majority of the scanned backends, all are flagged
/// (the fleet disagrees and nobody can say which keys are right).
pub fn judge(expected: &[String], scanned: &[Option<&[HostKey]>]) -> Vec<Verdict> {
    if !expected.is_empty() {
        return scanned
            .iter()
            .map(|keys| match keys {
                None => Verdict::Unknown,
                Some(keys) => match keys.iter().find(|k| !expected.contains(&k.fingerprint)) {
                    Some(odd) => Verdict::Mismatch(format!(
                        "presents {} {} which is not in host-keys",
                        odd.kind, odd.fingerprint
                    )),
                    None => Verdict::Match,
                },
            })
            .collect();
    }
    let mut counts: BTreeMap<&[HostKey], usize> = BTreeMap::new();
    for keys in scanned.iter().flatten() {
        *counts.entry(keys).or_default() += 1;
    }
    let known: usize = counts.values().sum();
    let reference = counts.iter().find(|(_, &n)| 2 * n > known).map(|(keys, _)| *keys);
    scanned
        .iter()
        .map(|keys| match (keys, reference) {
            (None, _) => Verdict::Unknown,
            (Some(keys), Some(reference)) if *keys == reference => Verdict::Match,
            (Some(keys), Some(reference)) => {
                Verdict::Mismatch(describe_difference(keys, reference))
            }
            (Some(_), None) => Verdict::Mismatch(format!(
                "the {known} scanned backends present {} different host-key sets and none has a \
                 majority; set host-keys to say which is right",
                counts.len()
            )),
        })
        .collect()
}

fn describe_difference(keys: &[HostKey], reference: &[HostKey]) -> String {
    let by_kind = |set: &[HostKey], kind: &str| {
        set.iter().find(|k| k.kind == kind).map(|k| k.fingerprint.clone())
    };
    for key in keys {
        match by_kind(reference, &key.kind) {
            Some(fp) if fp != key.fingerprint => {
                return format!(
                    "its {} key is {}, the other backends' is {fp}",
                    key.kind, key.fingerprint
                );
            }
            None => {
                return format!("presents a {} key the other backends do not have", key.kind);
            }
            Some(_) => {}
        }
    }
    let missing: Vec<&str> = reference
        .iter()
        .filter(|r| by_kind(keys, &r.kind).is_none())
        .map(|r| r.kind.as_str())
        .collect();
    format!("lacks the {} key(s) the other backends present", missing.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, fp: &str) -> HostKey {
        HostKey { kind: kind.into(), fingerprint: format!("SHA256:{fp}") }
    }

    #[test]
    fn the_odd_one_out_is_flagged_against_the_majority() {
        let same = vec![key("ssh-ed25519", "A"), key("ssh-rsa", "R")];
        let odd = vec![key("ssh-ed25519", "B"), key("ssh-rsa", "R")];
        let verdicts = judge(&[], &[Some(&same), Some(&odd), Some(&same), None]);
        assert_eq!(verdicts[0], Verdict::Match);
        assert_eq!(verdicts[2], Verdict::Match);
        assert_eq!(verdicts[3], Verdict::Unknown);
        let Verdict::Mismatch(why) = &verdicts[1] else { panic!("{verdicts:?}") };
        assert!(why.contains("ssh-ed25519 key is SHA256:B") && why.contains("SHA256:A"), "{why}");
    }

    #[test]
    fn a_missing_or_extra_key_type_is_a_mismatch() {
        let full = vec![key("ssh-ed25519", "A"), key("ssh-rsa", "R")];
        let short = vec![key("ssh-ed25519", "A")];
        let v = judge(&[], &[Some(&full), Some(&full), Some(&short)]);
        let Verdict::Mismatch(why) = &v[2] else { panic!("{v:?}") };
        assert!(why.contains("lacks the ssh-rsa"), "{why}");
        let v = judge(&[], &[Some(&short), Some(&short), Some(&full)]);
        let Verdict::Mismatch(why) = &v[2] else { panic!("{v:?}") };
        assert!(why.contains("ssh-rsa key the other backends do not have"), "{why}");
    }

    #[test]
    fn without_a_majority_everyone_is_flagged() {
        let a = vec![key("ssh-ed25519", "A")];
        let b = vec![key("ssh-ed25519", "B")];
        let v = judge(&[], &[Some(&a), Some(&b)]);
        assert!(v.iter().all(|v| matches!(v, Verdict::Mismatch(w) if w.contains("majority"))));
        assert_eq!(judge(&[], &[Some(&a), None]), vec![Verdict::Match, Verdict::Unknown]);
    }

    #[test]
    fn configured_keys_are_the_reference() {
        let good = vec![key("ssh-ed25519", "A"), key("ssh-rsa", "R")];
        let bad = vec![key("ssh-ed25519", "X"), key("ssh-rsa", "R")];
        let expected = vec!["SHA256:A".to_owned(), "SHA256:R".to_owned()];
        // Even when the wrong keys are the majority, the configuration decides.
        let v = judge(&expected, &[Some(&bad), Some(&bad), Some(&good)]);
        assert!(matches!(&v[0], Verdict::Mismatch(w) if w.contains("SHA256:X")), "{v:?}");
        assert_eq!(v[2], Verdict::Match);
    }
}

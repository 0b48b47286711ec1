//! The certificate authority: the trust anchor and issuer on disk, and turning a checked CSR
//! into an X.509-SVID.
//!
//! Data directory layout (keys are written 0600, the directory 0700):
//!
//! | file | what |
//! |---|---|
//! | `trust-anchor.pem` | the trust anchor certificate(s): the trust bundle served to workloads |
//! | `trust-anchor.key` | the anchor's key, only when weft created the anchor (move it offline if you like; it is needed only to create a new issuer) |
//! | `issuer.pem`, `issuer.key` | the intermediate that signs workload certificates |
//! | `token-signing.key` | the key that signs bootstrap tokens |
//! | `trust-domain` | the trust domain the CA serves (written when the CA is created) |
//!
//! An operator can hand their own anchor and issuer instead (`--trust-anchor`, `--issuer-cert`,
//! `--issuer-key`); they are used where they are and never copied.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::csr::CheckedCsr;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::{self, TrustBundle};
use crate::token::TokenKey;

mod direct;
mod files;
pub mod links;
pub mod rotate;
pub mod state;
mod trust_domain;

pub(crate) use self::files::write_file;
use self::files::{
    create_anchor, create_issuer, ensure_dir, load_or_create_token_key, warn_if_readable_by_others,
};
pub(crate) use self::files::{key_signs_for, read_key};
use self::links::{AnchorLink, LINKS_FILE, links_from_pem};
use self::state::CaState;
use self::trust_domain::settle_trust_domain;

pub const ANCHOR_CERT_FILE: &str = "trust-anchor.pem";
pub const ANCHOR_KEY_FILE: &str = "trust-anchor.key";
pub const ISSUER_CERT_FILE: &str = "issuer.pem";
pub const ISSUER_KEY_FILE: &str = "issuer.key";
pub const TOKEN_KEY_FILE: &str = "token-signing.key";
pub const TRUST_DOMAIN_FILE: &str = "trust-domain";

/// Default lifetime of a workload certificate.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How far `NotBefore` is back-dated, so peers with a slightly slow clock accept a fresh
/// certificate.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lifetime of a trust anchor weft creates.
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an issuer weft creates.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the authority's material comes from.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The trust domain asked for (`--trust-domain`): `None` for the one the data directory
    /// records (the default, `weft.local`, for a new CA). A CA serves one trust domain: asking
    /// another of it is an error that names the one it serves.
    pub trust_domain: Option<TrustDomain>,
    pub data_dir: PathBuf,
    /// Operator-supplied anchor/issuer: all three or none.
    pub anchor_file: Option<PathBuf>,
    pub issuer_cert_file: Option<PathBuf>,
    pub issuer_key_file: Option<PathBuf>,
    pub leaf_lifetime: Duration,
    pub clock_skew: Duration,
    /// Lifetime of an issuer weft creates (the first one, and each rotation's).
    pub issuer_lifetime: Duration,
}

impl AuthorityConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            trust_domain: None,
            data_dir: data_dir.into(),
            anchor_file: None,
            issuer_cert_file: None,
            issuer_key_file: None,
            leaf_lifetime: DEFAULT_LEAF_LIFETIME,
            clock_skew: DEFAULT_CLOCK_SKEW,
            issuer_lifetime: ISSUER_LIFETIME,
        }
    }
}

/// Why the authority cannot start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(
        "cannot read {path}: {source}: check that the file exists and that the identity service may read it"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}: check that the data directory is writable")]
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {what}. Restore it from a backup, or hand weft a valid one")]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "{path} expired at {at}: issue a new {what} (remove the issuer files to let weft create a new issuer from its trust anchor key)"
    )]
    Expired {
        path: PathBuf,
        at: String,
        what: &'static str,
    },
    #[error("{path} is not valid until {at}: check the system clock")]
    NotYetValid { path: PathBuf, at: String },
    #[error(
        "the issuer {issuer} is not signed by any trust anchor in {anchor}: hand weft an issuer certificate signed by one of the anchors"
    )]
    NotChained { issuer: PathBuf, anchor: PathBuf },
    #[error(
        "{path} is not a CA certificate (it needs basicConstraints cA=true and keyUsage keyCertSign)"
    )]
    NotCa { path: PathBuf },
    #[error("the key {key} does not belong to the certificate {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{0}")]
    Incomplete(String),
    #[error("creating certificates failed: {0}")]
    Generate(String),
    #[error(
        "the CA in {dir} serves the trust domain {serves}, not {asked}: leave --trust-domain (WEFT_TRUST_DOMAIN) out, or give {serves}; a CA for another trust domain needs a data directory of its own"
    )]
    OtherTrustDomain {
        dir: PathBuf,
        serves: String,
        asked: String,
    },
}

/// A loaded, checked authority, ready to issue.
pub struct Authority {
    trust_domain: TrustDomain,
    bundle: TrustBundle,
    /// Which of the bundle's anchors signed the issuer.
    active_anchor: usize,
    issuer_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    links: Vec<AnchorLink>,
    state: CaState,
    issuer_not_before: SystemTime,
    issuer_not_after: SystemTime,
    anchor_not_after: SystemTime,
    token_key: TokenKey,
    leaf_lifetime: Duration,
    clock_skew: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("bundle", &self.bundle)
            .field("issuer_not_after", &self.issuer_not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate the authority issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub identity: SpiffeId,
    pub leaf: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Authority {
    /// Loads the authority from its files, creating a new anchor, issuer and token key in the
    /// data directory on first start. Refuses, with what to fix, anything it cannot trust.
    pub fn load_or_create(cfg: &AuthorityConfig) -> Result<Self, AuthorityError> {
        let dir = &cfg.data_dir;
        let trust_domain = settle_trust_domain(cfg)?;
        let supplied = [
            &cfg.anchor_file,
            &cfg.issuer_cert_file,
            &cfg.issuer_key_file,
        ];
        let (anchor_path, issuer_path, issuer_key_path) = match supplied {
            [Some(a), Some(c), Some(k)] => (a.clone(), c.clone(), k.clone()),
            [None, None, None] => {
                ensure_dir(dir)?;
                let anchor = dir.join(ANCHOR_CERT_FILE);
                let issuer = dir.join(ISSUER_CERT_FILE);
                let issuer_key = dir.join(ISSUER_KEY_FILE);
                if !anchor.exists() {
                    if issuer.exists() || issuer_key.exists() {
                        return Err(AuthorityError::Incomplete(format!(
                            "{} exists but {} does not: restore the trust anchor, or remove the issuer files to start a new trust domain",
                            issuer.display(),
                            anchor.display()
                        )));
                    }
                    tracing::info!(dir = %dir.display(), "creating a new trust anchor and issuer");
                    create_anchor(cfg, &trust_domain)?;
                }
                if !issuer.exists() && !issuer_key.exists() {
                    create_issuer(cfg, &trust_domain)?;
                }
                (anchor, issuer, issuer_key)
            }
            _ => {
                return Err(AuthorityError::Incomplete(
                    "an operator-supplied CA needs all three of --trust-anchor, --issuer-cert and --issuer-key".into(),
                ));
            }
        };
        let token_key = load_or_create_token_key(&dir.join(TOKEN_KEY_FILE), dir)?;
        Self::load(
            cfg,
            trust_domain,
            &anchor_path,
            &issuer_path,
            &issuer_key_path,
            token_key,
        )
    }

    fn load(
        cfg: &AuthorityConfig,
        trust_domain: TrustDomain,
        anchor_path: &Path,
        issuer_path: &Path,
        issuer_key_path: &Path,
        token_key: TokenKey,
    ) -> Result<Self, AuthorityError> {
        let now = SystemTime::now();
        let anchor_pem = read(anchor_path)?;
        let anchors = tls::certs_from_pem(&anchor_pem).map_err(|e| corrupt(anchor_path, e))?;
        if anchors.is_empty() {
            return Err(corrupt(anchor_path, "it holds no PEM certificate"));
        }
        let mut anchor_not_after = None;
        for a in &anchors {
            let (_, x) = X509Certificate::from_der(a).map_err(|e| corrupt(anchor_path, e))?;
            check_ca(&x, anchor_path)?;
            let na = check_validity(&x, anchor_path, now, "trust anchor")?;
            anchor_not_after = Some(anchor_not_after.map_or(na, |m: SystemTime| m.min(na)));
        }
        let bundle = TrustBundle::from_der(anchors.clone()).map_err(|e| corrupt(anchor_path, e))?;

        let issuer_pem = read(issuer_path)?;
        let issuer_certs = tls::certs_from_pem(&issuer_pem).map_err(|e| corrupt(issuer_path, e))?;
        let issuer_der = issuer_certs
            .into_iter()
            .next()
            .ok_or_else(|| corrupt(issuer_path, "it holds no PEM certificate"))?;
        let (_, issuer_x) =
            X509Certificate::from_der(&issuer_der).map_err(|e| corrupt(issuer_path, e))?;
        check_ca(&issuer_x, issuer_path)?;
        let issuer_not_after = check_validity(&issuer_x, issuer_path, now, "issuer")?;
        let issuer_not_before = asn1_to_system(issuer_x.validity().not_before);
        let Some(active_anchor) = anchors.iter().position(|a| {
            X509Certificate::from_der(a)
                .map(|(_, ax)| issuer_x.verify_signature(Some(ax.public_key())).is_ok())
                .unwrap_or(false)
        }) else {
            return Err(AuthorityError::NotChained {
                issuer: issuer_path.to_path_buf(),
                anchor: anchor_path.to_path_buf(),
            });
        };
        let links_path = cfg.data_dir.join(LINKS_FILE);
        let links = match std::fs::read(&links_path) {
            Ok(pem) => links_from_pem(&pem).map_err(|e| corrupt(&links_path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(AuthorityError::Unreadable {
                    path: links_path,
                    source,
                });
            }
        };
        let state = CaState::load(&cfg.data_dir)?;

        let key_pem = read(issuer_key_path)?;
        let key_pem = String::from_utf8(key_pem)
            .map_err(|_| corrupt(issuer_key_path, "it is not a PEM text"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(issuer_key_path, e))?;
        if key.public_key_raw() != issuer_x.public_key().subject_public_key.as_ref() {
            return Err(AuthorityError::KeyMismatch {
                key: issuer_key_path.to_path_buf(),
                cert: issuer_path.to_path_buf(),
            });
        }
        warn_if_readable_by_others(issuer_key_path);
        let issuer =
            Issuer::from_ca_cert_der(&issuer_der, key).map_err(|e| corrupt(issuer_path, e))?;

        Ok(Self {
            trust_domain,
            bundle,
            active_anchor,
            issuer_der,
            issuer,
            links,
            state,
            issuer_not_before,
            issuer_not_after,
            anchor_not_after: anchor_not_after.unwrap_or(now),
            token_key,
            leaf_lifetime: cfg.leaf_lifetime,
            clock_skew: cfg.clock_skew,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.token_key
    }

    pub fn leaf_lifetime(&self) -> Duration {
        self.leaf_lifetime
    }

    pub fn issuer_not_before(&self) -> SystemTime {
        self.issuer_not_before
    }

    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    pub fn anchor_not_after(&self) -> SystemTime {
        self.anchor_not_after
    }

    /// The fingerprint bootstrap tokens pin: that of the anchor that signed the issuer.
    pub fn anchor_fingerprint(&self) -> String {
        tls::fingerprint(self.active_anchor())
    }

    /// The anchor that signed the issuer.
    pub fn active_anchor(&self) -> &CertificateDer<'static> {
        &self.bundle.certs()[self.active_anchor]
    }

    /// The issuer's certificate.
    pub fn issuer_cert(&self) -> &CertificateDer<'static> {
        &self.issuer_der
    }

    /// The issuer's fingerprint, as clients report it.
    pub fn issuer_fingerprint(&self) -> String {
        tls::fingerprint(&self.issuer_der)
    }

    /// The links from rotated-out anchors to their successors.
    pub fn links(&self) -> &[AnchorLink] {
        &self.links
    }

    /// The rotation state recorded with the CA.
    pub fn state(&self) -> &CaState {
        &self.state
    }

    /// Issues an X.509-SVID for `identity` to the key of a checked CSR.
    pub fn issue(&self, csr: &CheckedCsr, identity: &SpiffeId) -> Result<Issued, String> {
        self.issue_for(&csr.public_key, identity, &[], self.leaf_lifetime)
    }

    /// Issues a certificate for `identity` to `public_key`, with extra DNS names (only for the
    /// identity service's own serving certificate; workload SVIDs carry none).
    pub(crate) fn issue_for(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &SpiffeId,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<Issued, String> {
        let now = SystemTime::now();
        let not_before = now - self.clock_skew;
        // Never outlive the issuer: a leaf must not claim validity its chain lacks.
        let not_after = (now + lifetime).min(self.issuer_not_after);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        let uri = rcgen::string::Ia5String::try_from(identity.as_str().to_string())
            .map_err(|e| e.to_string())?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            let dns =
                rcgen::string::Ia5String::try_from(name.clone()).map_err(|e| e.to_string())?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let leaf = cert.der().clone();
        Ok(Issued {
            identity: identity.clone(),
            chain: vec![leaf.clone(), self.issuer_der.clone()],
            leaf,
            // Whole seconds, as encoded in the certificate.
            not_before: truncate_secs(not_before),
            not_after: truncate_secs(not_after),
        })
    }
}

fn truncate_secs(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
}

/// A positive random 128-bit serial (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero octet, so the encoded length is always 16
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn corrupt(path: &Path, what: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, AuthorityError> {
    fs::read(path).map_err(|source| AuthorityError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

fn check_ca(x: &X509Certificate<'_>, path: &Path) -> Result<(), AuthorityError> {
    let key_cert_sign = matches!(x.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign());
    if x.is_ca() && key_cert_sign {
        Ok(())
    } else {
        Err(AuthorityError::NotCa {
            path: path.to_path_buf(),
        })
    }
}

fn check_validity(
    x: &X509Certificate<'_>,
    path: &Path,
    now: SystemTime,
    what: &'static str,
) -> Result<SystemTime, AuthorityError> {
    let nb = asn1_to_system(x.validity().not_before);
    let na = asn1_to_system(x.validity().not_after);
    if now >= na {
        return Err(AuthorityError::Expired {
            path: path.to_path_buf(),
            at: crate::rfc3339(na),
            what,
        });
    }
    if now < nb {
        return Err(AuthorityError::NotYetValid {
            path: path.to_path_buf(),
            at: crate::rfc3339(nb),
        });
    }
    Ok(na)
}

pub(crate) fn asn1_to_system(t: ASN1Time) -> SystemTime {
    let ts = t.timestamp();
    if ts >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

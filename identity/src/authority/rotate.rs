//! Rotating the issuer and the trust anchor: the changes to the CA's files.
//!
//! Each change takes the CA's lock, checks the files as the identity service would load them,
//! writes the new ones atomically and records the step in `ca-state.json` before the bundle
//! changes, so that running a step again after an interruption finishes it. The identity
//! service picks the new files up while it runs. Whether the mesh is ready for a step (every
//! proxy trusts the new anchor, every proxy holds a leaf of the new issuer) is for the caller
//! to check: `weft ca rotate` asks the control plane.
//!
//! An anchor rotation:
//! 1. `start`: a new anchor (and its key) is created; the old anchor's key signs a link to it
//!    (`links.rs`); the bundle becomes old + new. Step `trusting`.
//! 2. `switch`: a new issuer under the new anchor. Step `issuing`.
//! 3. `finish`: the old anchors leave the bundle. No rotation under way.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{DnType, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;

use super::files::{ca_params, generate_key, write_issuer};
use super::links::{AnchorLink, LINKS_FILE, links_to_pem};
use super::state::{AnchorRotation, AnchorStep, CaLock, CaState, RetiredIssuer, unix, unix_now};
use super::trust_domain::ANCHOR_NAME;
use super::{
    ANCHOR_CERT_FILE, ANCHOR_KEY_FILE, Authority, AuthorityConfig, AuthorityError, corrupt,
    key_signs_for, read_key, write_file,
};
use crate::tls::{self, fingerprint};

/// Where a new anchor's key is kept while the rotation trusts it but does not yet issue under
/// it, when the old anchor's key is in the data directory.
pub const NEXT_ANCHOR_KEY_FILE: &str = "trust-anchor.next.key";

/// The anchor keys an operation may sign with: those in the data directory and those the
/// operator hands over for one command (`--anchor-key`), matched to anchors by public key.
#[derive(Debug, Default)]
pub struct AnchorKeys {
    paths: Vec<PathBuf>,
}

impl AnchorKeys {
    pub fn gather(dir: &Path, given: &[PathBuf]) -> Result<Self, AuthorityError> {
        let mut paths = given.to_vec();
        for f in [ANCHOR_KEY_FILE, NEXT_ANCHOR_KEY_FILE] {
            if dir.join(f).exists() {
                paths.push(dir.join(f));
            }
        }
        // Unreadable or corrupt keys the operator named are errors now, not "key missing" later.
        for p in given {
            read_key(p)?;
        }
        Ok(Self { paths })
    }

    /// The key of `anchor`, or an error naming the anchor and how to hand its key over.
    fn key_for(&self, anchor: &CertificateDer<'_>) -> Result<KeyPair, AuthorityError> {
        for p in &self.paths {
            if let Ok(key) = read_key(p)
                && key_signs_for(&key, anchor)
            {
                return Ok(key);
            }
        }
        Err(AuthorityError::Incomplete(format!(
            "this step signs with the key of the trust anchor {}, which is neither in the data directory nor among the --anchor-key files given: pass it with --anchor-key FILE",
            fingerprint(anchor)
        )))
    }
}

/// How a new issuer is made.
#[derive(Debug, Clone)]
pub struct IssuerOptions {
    pub lifetime: Duration,
    /// Clients re-issue leaves of other issuers within this (else on their own schedule).
    pub reissue_within: Option<Duration>,
}

/// How a new anchor is made.
#[derive(Debug, Clone)]
pub struct AnchorOptions {
    pub lifetime: Duration,
    /// Where the new anchor's key goes; by default beside the old one's in the data directory.
    pub new_key: Option<PathBuf>,
    /// Whether the old anchor signs a link to the new one (needs its key), so bootstrap tokens
    /// pinning the old anchor keep working after it is gone.
    pub link: bool,
    pub issuer: IssuerOptions,
}

fn own_files(cfg: &AuthorityConfig) -> Result<(), AuthorityError> {
    if cfg.anchor_file.is_some() {
        return Err(AuthorityError::Incomplete(
            "this CA's anchor and issuer are files you handed weft (--trust-anchor, --issuer-cert, --issuer-key): rotate them with your own tools (add the new anchor to the bundle first, drop the old one last), or let weft keep them in its data directory".into(),
        ));
    }
    Ok(())
}

/// A new issuer under the anchor that signed the current one. Returns its fingerprint.
pub fn rotate_issuer(
    cfg: &AuthorityConfig,
    keys: &AnchorKeys,
    opts: &IssuerOptions,
) -> Result<String, AuthorityError> {
    own_files(cfg)?;
    let _lock = CaLock::acquire(&cfg.data_dir)?;
    let ca = Authority::load_or_create(cfg)?;
    let anchor = ca.active_anchor().clone();
    let key = keys.key_for(&anchor)?;
    new_issuer(cfg, &ca, &anchor, key, opts, "issuer rotated")
}

fn new_issuer(
    cfg: &AuthorityConfig,
    ca: &Authority,
    anchor: &CertificateDer<'_>,
    key: KeyPair,
    opts: &IssuerOptions,
    why: &str,
) -> Result<String, AuthorityError> {
    let dir = &cfg.data_dir;
    let cert = write_issuer(dir, ca.trust_domain(), anchor, key, opts.lifetime)?;
    let fp = fingerprint(&cert);
    let mut st = CaState::load(dir)?;
    let now = unix_now();
    st.retired_issuers.retain(|r| r.not_after > now);
    st.retired_issuers.push(RetiredIssuer {
        fingerprint: ca.issuer_fingerprint(),
        retired: now,
        not_after: unix(ca.issuer_not_after()),
    });
    st.reissue_before = opts.reissue_within.map(|d| unix(SystemTime::now() + d));
    st.record(format!(
        "{why}: issuer {fp} (under anchor {}) replaces {}",
        fingerprint(anchor),
        ca.issuer_fingerprint()
    ));
    st.save(dir)?;
    Ok(fp)
}

/// Asks every client to replace a leaf of another issuer than the current one within `within`
/// (served as `reissue_before` by `/v1/ca`).
pub fn ask_reissue(cfg: &AuthorityConfig, within: Duration) -> Result<(), AuthorityError> {
    let _lock = CaLock::acquire(&cfg.data_dir)?;
    let mut st = CaState::load(&cfg.data_dir)?;
    st.reissue_before = Some(unix(SystemTime::now() + within));
    st.record(format!(
        "leaves of other issuers asked to be re-issued within {}s",
        within.as_secs()
    ));
    st.save(&cfg.data_dir)
}

/// Whether `at` (a fraction, 0 to 1) of the issuer's lifetime has passed.
pub fn issuer_due(ca: &Authority, at: f64) -> bool {
    // Its life starts after the back-dating weft gives a CA certificate for slow clocks.
    let na = ca.issuer_not_after();
    let nb = (ca.issuer_not_before() + super::DEFAULT_CLOCK_SKEW).min(na);
    let life = na.duration_since(nb).unwrap_or_default();
    SystemTime::now() >= nb + life.mul_f64(at.clamp(0.0, 1.0))
}

/// The identity service's own rotation (`--rotate-at`): a new issuer under the current anchor
/// once `at` of the issuer's lifetime has passed, with the anchor key in the data directory.
/// Checked again under the CA's lock, so replicas sharing the directory rotate once. `Ok(None)`
/// when it is not due, or another process is changing the CA now.
pub fn rotate_issuer_when_due(
    cfg: &AuthorityConfig,
    at: f64,
) -> Result<Option<String>, AuthorityError> {
    own_files(cfg)?;
    let Ok(_lock) = CaLock::acquire(&cfg.data_dir) else {
        return Ok(None);
    };
    let ca = Authority::load_or_create(cfg)?;
    if !issuer_due(&ca, at) {
        return Ok(None);
    }
    let anchor = ca.active_anchor().clone();
    let key = AnchorKeys::gather(&cfg.data_dir, &[])?.key_for(&anchor)?;
    let opts = IssuerOptions {
        lifetime: cfg.issuer_lifetime,
        reissue_within: None,
    };
    new_issuer(
        cfg,
        &ca,
        &anchor,
        key,
        &opts,
        "issuer rotated by the identity service (--rotate-at)",
    )
    .map(Some)
}

/// Step 1: a new anchor beside the old ones. Refused while a rotation is under way.
pub fn anchor_start(
    cfg: &AuthorityConfig,
    keys: &AnchorKeys,
    opts: &AnchorOptions,
) -> Result<AnchorRotation, AuthorityError> {
    own_files(cfg)?;
    let dir = &cfg.data_dir;
    let _lock = CaLock::acquire(dir)?;
    let ca = Authority::load_or_create(cfg)?;
    let mut st = CaState::load(dir)?;
    if let Some(r) = &st.anchor_rotation {
        return Err(AuthorityError::Incomplete(format!(
            "an anchor rotation to {} is under way (step {}): run `weft ca rotate anchor` to go on with it, or `weft ca rotate anchor --abort` while it is at its first step",
            r.new,
            r.step.as_str()
        )));
    }
    let new_key_path = match &opts.new_key {
        Some(p) => p.clone(),
        None if dir.join(ANCHOR_KEY_FILE).exists() => dir.join(NEXT_ANCHOR_KEY_FILE),
        None => {
            return Err(AuthorityError::Incomplete(format!(
                "the trust anchor's key is not in {}: say where the new anchor's key goes with --new-anchor-key FILE",
                dir.display()
            )));
        }
    };
    let old_anchor = ca.active_anchor().clone();
    let old_key = if opts.link {
        Some(keys.key_for(&old_anchor).map_err(|e| {
            AuthorityError::Incomplete(format!(
                "{e} (the old anchor signs a link to the new one, so bootstrap tokens made before keep working; without its key, pass --no-link and make new tokens after the rotation)"
            ))
        })?)
    } else {
        None
    };
    let key = generate_key()?;
    let mut params = ca_params(
        format!("{ANCHOR_NAME} ({})", ca.trust_domain()),
        opts.lifetime,
        1,
    );
    params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("created {}", crate::rfc3339(SystemTime::now())),
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| AuthorityError::Generate(e.to_string()))?;
    write_file(&new_key_path, key.serialize_pem().as_bytes(), 0o600)?;
    if let Some(old_key) = old_key {
        let issuer = Issuer::from_ca_cert_der(&old_anchor, old_key)
            .map_err(|e| corrupt(&dir.join(ANCHOR_CERT_FILE), e))?;
        let cross = params
            .signed_by(&key, &issuer)
            .map_err(|e| AuthorityError::Generate(e.to_string()))?;
        let mut links = ca.links().to_vec();
        links.push(AnchorLink {
            from: old_anchor.clone(),
            cross: cross.der().clone(),
        });
        write_file(
            &dir.join(LINKS_FILE),
            links_to_pem(&links).as_bytes(),
            0o644,
        )?;
    }
    let rotation = AnchorRotation {
        step: AnchorStep::Trusting,
        old: ca.bundle().fingerprints(),
        new: fingerprint(cert.der()),
        new_anchor: cert.pem(),
        new_key: new_key_path,
        started: unix_now(),
        switched: None,
    };
    st.anchor_rotation = Some(rotation.clone());
    st.record(format!(
        "anchor rotation started: {} trusted beside {}",
        rotation.new,
        rotation.old.join(", ")
    ));
    st.save(dir)?;
    ensure_trusted(cfg, &ca, &rotation)?;
    Ok(rotation)
}

/// The new anchor of `rotation`, parsed.
fn new_anchor(
    rotation: &AnchorRotation,
    dir: &Path,
) -> Result<CertificateDer<'static>, AuthorityError> {
    let state = dir.join(super::state::STATE_FILE);
    tls::certs_from_pem(rotation.new_anchor.as_bytes())
        .map_err(|e| corrupt(&state, e))?
        .into_iter()
        .next()
        .ok_or_else(|| corrupt(&state, "the new anchor's certificate is missing"))
}

/// Makes sure the bundle holds the new anchor (a step interrupted before it wrote the bundle).
fn ensure_trusted(
    cfg: &AuthorityConfig,
    ca: &Authority,
    rotation: &AnchorRotation,
) -> Result<(), AuthorityError> {
    if ca.bundle().fingerprints().contains(&rotation.new) {
        return Ok(());
    }
    let mut anchors = ca.bundle().certs().to_vec();
    anchors.push(new_anchor(rotation, &cfg.data_dir)?);
    write_bundle(&cfg.data_dir, &anchors)
}

fn write_bundle(dir: &Path, anchors: &[CertificateDer<'_>]) -> Result<(), AuthorityError> {
    let pem: String = anchors
        .iter()
        .map(|a| tls::der_to_pem("CERTIFICATE", a))
        .collect();
    write_file(&dir.join(ANCHOR_CERT_FILE), pem.as_bytes(), 0o644)
}

/// The anchor rotation under way, if any.
pub fn under_way(cfg: &AuthorityConfig) -> Result<Option<AnchorRotation>, AuthorityError> {
    Ok(CaState::load(&cfg.data_dir)?.anchor_rotation)
}

/// Step 2: the issuer switches to one under the new anchor. Done again, it does nothing.
pub fn anchor_switch(
    cfg: &AuthorityConfig,
    keys: &AnchorKeys,
    opts: &IssuerOptions,
) -> Result<AnchorRotation, AuthorityError> {
    let dir = &cfg.data_dir;
    let _lock = CaLock::acquire(dir)?;
    let ca = Authority::load_or_create(cfg)?;
    let mut st = CaState::load(dir)?;
    let Some(mut rotation) = st.anchor_rotation.clone() else {
        return Err(no_rotation());
    };
    ensure_trusted(cfg, &ca, &rotation)?;
    let ca = Authority::load_or_create(cfg)?;
    if rotation.step == AnchorStep::Trusting {
        let anchor = new_anchor(&rotation, dir)?;
        if ca.anchor_fingerprint() != rotation.new {
            let key = match read_key(&rotation.new_key) {
                Ok(k) if key_signs_for(&k, &anchor) => k,
                _ => keys.key_for(&anchor)?,
            };
            new_issuer(
                cfg,
                &ca,
                &anchor,
                key,
                opts,
                "anchor rotation switched the issuer",
            )?;
            st = CaState::load(dir)?;
        }
        if rotation.new_key == dir.join(NEXT_ANCHOR_KEY_FILE) && rotation.new_key.exists() {
            fs::rename(&rotation.new_key, dir.join(ANCHOR_KEY_FILE)).map_err(|source| {
                AuthorityError::Unwritable {
                    path: dir.join(ANCHOR_KEY_FILE),
                    source,
                }
            })?;
        }
        rotation.step = AnchorStep::Issuing;
        rotation.switched = Some(unix_now());
        if rotation.new_key == dir.join(NEXT_ANCHOR_KEY_FILE) {
            rotation.new_key = dir.join(ANCHOR_KEY_FILE);
        }
        st.anchor_rotation = Some(rotation.clone());
        st.save(dir)?;
    }
    Ok(rotation)
}

/// Step 3: the old anchors leave the bundle; the rotation is over. Done again, it does nothing.
pub fn anchor_finish(cfg: &AuthorityConfig) -> Result<(), AuthorityError> {
    let dir = &cfg.data_dir;
    let _lock = CaLock::acquire(dir)?;
    let ca = Authority::load_or_create(cfg)?;
    let mut st = CaState::load(dir)?;
    let Some(rotation) = st.anchor_rotation.clone() else {
        return Ok(());
    };
    if rotation.step != AnchorStep::Issuing || ca.anchor_fingerprint() != rotation.new {
        return Err(AuthorityError::Incomplete(format!(
            "the issuer is not under the new anchor {} yet (step {}): the old anchors stay until it is",
            rotation.new,
            rotation.step.as_str()
        )));
    }
    let keep: Vec<CertificateDer<'static>> = ca
        .bundle()
        .certs()
        .iter()
        .filter(|a| !rotation.old.contains(&fingerprint(a)))
        .cloned()
        .collect();
    if keep.len() != ca.bundle().certs().len() {
        write_bundle(dir, &keep)?;
    }
    st.anchor_rotation = None;
    st.record(format!(
        "anchor rotation finished: {} dropped, {} is the anchor",
        rotation.old.join(", "),
        rotation.new
    ));
    st.save(dir)
}

/// Abandons a rotation at its first step: the new anchor leaves the bundle, its key and link
/// are removed.
pub fn anchor_abort(cfg: &AuthorityConfig) -> Result<(), AuthorityError> {
    let dir = &cfg.data_dir;
    let _lock = CaLock::acquire(dir)?;
    let ca = Authority::load_or_create(cfg)?;
    let mut st = CaState::load(dir)?;
    let Some(rotation) = st.anchor_rotation.clone() else {
        return Err(no_rotation());
    };
    if rotation.step != AnchorStep::Trusting {
        return Err(AuthorityError::Incomplete(format!(
            "the issuer already switched to the new anchor {}: the rotation can only go on (`weft ca rotate anchor`)",
            rotation.new
        )));
    }
    let keep: Vec<CertificateDer<'static>> = ca
        .bundle()
        .certs()
        .iter()
        .filter(|a| fingerprint(a) != rotation.new)
        .cloned()
        .collect();
    write_bundle(dir, &keep)?;
    let anchor = new_anchor(&rotation, dir)?;
    let links: Vec<AnchorLink> = ca
        .links()
        .iter()
        .filter(|l| !key_of_cert_matches(&l.cross, &anchor))
        .cloned()
        .collect();
    write_file(
        &dir.join(LINKS_FILE),
        links_to_pem(&links).as_bytes(),
        0o644,
    )?;
    let _ = fs::remove_file(&rotation.new_key);
    st.anchor_rotation = None;
    st.record(format!("anchor rotation to {} abandoned", rotation.new));
    st.save(dir)
}

fn key_of_cert_matches(a: &CertificateDer<'_>, b: &CertificateDer<'_>) -> bool {
    use x509_parser::prelude::*;
    match (X509Certificate::from_der(a), X509Certificate::from_der(b)) {
        (Ok((_, a)), Ok((_, b))) => a.public_key().raw == b.public_key().raw,
        _ => false,
    }
}

fn no_rotation() -> AuthorityError {
    AuthorityError::Incomplete(
        "no anchor rotation is under way: `weft ca rotate anchor` starts one".into(),
    )
}

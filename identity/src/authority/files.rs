//! The CA's files: creating the anchor, an issuer and the token key, and writing files
//! atomically with their modes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::trust_domain::ANCHOR_NAME;
use super::{
    ANCHOR_CERT_FILE, ANCHOR_KEY_FILE, ANCHOR_LIFETIME, AuthorityConfig, AuthorityError,
    DEFAULT_CLOCK_SKEW, ISSUER_CERT_FILE, ISSUER_KEY_FILE, corrupt, random_serial, read,
};
use rustls::pki_types::CertificateDer;

use crate::spiffe::TrustDomain;
use crate::token::TokenKey;

pub(super) fn ensure_dir(dir: &Path) -> Result<(), AuthorityError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|source| AuthorityError::Unwritable {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Writes a file atomically (temp file + rename) with the given mode.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthorityError> {
    let err = |source| AuthorityError::Unwritable {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

pub(super) fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "private key is readable by other users: chmod 600 it"
        );
    }
}

pub(super) fn ca_params(cn: String, lifetime: Duration, path_len: u8) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "weft");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = (now - DEFAULT_CLOCK_SKEW).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

pub(super) fn generate_key() -> Result<KeyPair, AuthorityError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AuthorityError::Generate(e.to_string()))
}

pub(super) fn create_anchor(
    cfg: &AuthorityConfig,
    trust_domain: &TrustDomain,
) -> Result<(), AuthorityError> {
    let key = generate_key()?;
    let params = ca_params(
        format!("{ANCHOR_NAME} ({trust_domain})"),
        ANCHOR_LIFETIME,
        1,
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| AuthorityError::Generate(e.to_string()))?;
    write_file(
        &cfg.data_dir.join(ANCHOR_KEY_FILE),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &cfg.data_dir.join(ANCHOR_CERT_FILE),
        cert.pem().as_bytes(),
        0o644,
    )
}

/// Creates the first issuer, signed by the anchor key in the data directory.
pub(super) fn create_issuer(
    cfg: &AuthorityConfig,
    trust_domain: &TrustDomain,
) -> Result<(), AuthorityError> {
    let dir = &cfg.data_dir;
    let anchor_key_path = dir.join(ANCHOR_KEY_FILE);
    if !anchor_key_path.exists() {
        return Err(AuthorityError::Incomplete(format!(
            "there is no issuer ({}) and no trust anchor key ({}) to create one: hand weft an issuer signed by the trust anchor",
            dir.join(ISSUER_CERT_FILE).display(),
            anchor_key_path.display()
        )));
    }
    let anchor_key = read_key(&anchor_key_path)?;
    let anchor_path = dir.join(ANCHOR_CERT_FILE);
    let anchors =
        crate::tls::certs_from_pem(&read(&anchor_path)?).map_err(|e| corrupt(&anchor_path, e))?;
    let anchor = anchors
        .iter()
        .find(|a| key_signs_for(&anchor_key, a))
        .ok_or_else(|| AuthorityError::KeyMismatch {
            key: anchor_key_path.clone(),
            cert: anchor_path.clone(),
        })?;
    write_issuer(dir, trust_domain, anchor, anchor_key, cfg.issuer_lifetime).map(|_| ())
}

/// Writes a new issuer (key, then certificate) signed by `anchor` (whose key is `anchor_key`),
/// and returns its certificate.
pub(super) fn write_issuer(
    dir: &Path,
    trust_domain: &TrustDomain,
    anchor: &CertificateDer<'_>,
    anchor_key: KeyPair,
    lifetime: Duration,
) -> Result<CertificateDer<'static>, AuthorityError> {
    let anchor_path = dir.join(ANCHOR_CERT_FILE);
    let anchor =
        Issuer::from_ca_cert_der(anchor, anchor_key).map_err(|e| corrupt(&anchor_path, e))?;
    let key = generate_key()?;
    let mut params = ca_params(format!("weft issuer ({trust_domain})"), lifetime, 0);
    params.distinguished_name.push(
        DnType::OrganizationalUnitName,
        format!("created {}", crate::rfc3339(SystemTime::now())),
    );
    let cert = params
        .signed_by(&key, &anchor)
        .map_err(|e| AuthorityError::Generate(e.to_string()))?;
    write_file(
        &dir.join(ISSUER_KEY_FILE),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&dir.join(ISSUER_CERT_FILE), cert.pem().as_bytes(), 0o644)?;
    Ok(cert.der().clone())
}

/// A PEM private key from a file.
pub(crate) fn read_key(path: &Path) -> Result<KeyPair, AuthorityError> {
    let pem = String::from_utf8(read(path)?).map_err(|_| corrupt(path, "it is not a PEM text"))?;
    KeyPair::from_pem(&pem).map_err(|e| corrupt(path, e))
}

/// Whether `key` is the key of the certificate `cert`.
pub(crate) fn key_signs_for(key: &KeyPair, cert: &CertificateDer<'_>) -> bool {
    use x509_parser::prelude::*;
    X509Certificate::from_der(cert)
        .is_ok_and(|(_, x)| x.public_key().subject_public_key.as_ref() == key.public_key_raw())
}

pub(super) fn load_or_create_token_key(
    path: &Path,
    dir: &Path,
) -> Result<TokenKey, AuthorityError> {
    if !path.exists() {
        ensure_dir(dir)?;
        let key = generate_key()?;
        write_file(path, key.serialize_pem().as_bytes(), 0o600)?;
    }
    let pem = read(path)?;
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| corrupt(path, format!("not a PEM private key: {e}")))?;
    warn_if_readable_by_others(path);
    TokenKey::from_pkcs8(der.secret_der()).map_err(|e| corrupt(path, e))
}

use rustls::pki_types::pem::PemObject as _;

//! `rserpool cert`: a deployment CA and the certificates of its registrars, PEs, pool
//! users and tools (RFC 5355's one trust domain per operation scope). Each certificate
//! carries its grants as `rserpool:` URIs (`transport::identity`), both TLS usages
//! (every role is a server to some peers and a client to others), and an ECDSA P-256
//! key. Keys are written with mode 0600.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rserpool_proto::auth::{PeerIdentity, PoolGrant};
use rserpool_proto::wire::PoolHandle;

use crate::RunError;
use crate::cli::{CertCaArgs, CertCommand, CertIssueArgs};
use crate::transport::identity;

pub(crate) fn run(command: &CertCommand) -> Result<String, RunError> {
    match command {
        CertCommand::Ca(args) => create_ca(args),
        CertCommand::Issue(args) => issue(args),
    }
}

/// The CA's files in `dir`.
pub(crate) fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

/// A certificate's files in `dir`.
pub(crate) fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

fn failed(what: &str, error: impl std::fmt::Display) -> RunError {
    RunError::Failed(format!("{what}: {error}"))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that lag the issuer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

pub(crate) fn create_ca(args: &CertCaArgs) -> Result<String, RunError> {
    let (cert_path, key_path) = ca_files(&args.dir);
    if cert_path.exists() || key_path.exists() {
        return Err(RunError::Usage(format!(
            "{} already holds a CA: remove it first to create a new one (every certificate it \
             issued would then have to be issued again)",
            args.dir.display()
        )));
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| failed(&args.dir.display().to_string(), e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&args.name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, args.days);
    let key = KeyPair::generate().map_err(|e| failed("key", e))?;
    let certificate = params.self_signed(&key).map_err(|e| failed("CA", e))?;
    write(&cert_path, &certificate.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok(format!(
        "CA: {}\nkey: {} (keep it offline; it signs every identity)\n",
        cert_path.display(),
        key_path.display()
    ))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// The identity the flags describe.
fn identity_of(args: &CertIssueArgs) -> Result<PeerIdentity, RunError> {
    let grant = |pools: &[String], flag: &str| -> Result<Option<PoolGrant>, RunError> {
        if pools.is_empty() {
            return Ok(None);
        }
        if pools.iter().any(|p| p == "*") {
            return Ok(Some(PoolGrant::Any));
        }
        pools
            .iter()
            .map(|p| {
                PoolHandle::new(p.as_bytes())
                    .map_err(|e| RunError::Usage(format!("--{flag} {p:?}: {e}")))
            })
            .collect::<Result<_, _>>()
            .map(|pools| Some(PoolGrant::Pools(pools)))
    };
    let registrar = args
        .registrar_id
        .as_deref()
        .map(crate::config::parse_id)
        .transpose()
        .map_err(RunError::Usage)?;
    let identity = PeerIdentity {
        name: args.name.clone(),
        registrar,
        pool_element: grant(&args.pe_pools, "pe")?,
        pool_user: grant(&args.pu_pools, "pu")?,
        observer: args.observer,
    };
    if identity::uris(&identity).is_empty()
        && args.dns_names.is_empty()
        && args.ip_addresses.is_empty()
    {
        return Err(RunError::Usage(
            "the certificate would grant nothing: give --registrar-id, --pe, --pu, --observer, --dns or --ip"
                .into(),
        ));
    }
    Ok(identity)
}

pub(crate) fn issue(args: &CertIssueArgs) -> Result<String, RunError> {
    if args.name.is_empty()
        || !args
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || args.name.starts_with('.')
    {
        return Err(RunError::Usage(format!(
            "--name {:?}: use letters, digits, '-', '_' and '.' (it names the files)",
            args.name
        )));
    }
    let identity = identity_of(args)?;
    let (ca_cert, ca_key) = ca_files(&args.dir);
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            RunError::Usage(format!(
                "{}: {e} (create the CA with `rserpool cert ca --dir {}`)",
                path.display(),
                args.dir.display()
            ))
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca_key)?).map_err(|e| failed("CA key", e))?;
    let ca_pem = read(&ca_cert)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| failed("CA", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&args.name);
    params.subject_alt_names = identity::uris(&identity)
        .into_iter()
        .map(|uri| {
            uri.clone()
                .try_into()
                .map(SanType::URI)
                .map_err(|e| failed(&uri, e))
        })
        .collect::<Result<_, _>>()?;
    for dns in &args.dns_names {
        let name = dns
            .clone()
            .try_into()
            .map_err(|e| RunError::Usage(format!("--dns {dns:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.subject_alt_names.extend(
        args.ip_addresses
            .iter()
            .map(|address| SanType::IpAddress(*address)),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, args.days);
    let key = KeyPair::generate().map_err(|e| failed("key", e))?;
    let certificate = params
        .signed_by(&key, &issuer)
        .map_err(|e| failed("certificate", e))?;
    let (cert_path, key_path) = files(&args.dir, &args.name);
    write(&cert_path, &certificate.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    let names = args
        .dns_names
        .iter()
        .cloned()
        .chain(args.ip_addresses.iter().map(ToString::to_string));
    let grants = identity::uris(&identity)
        .into_iter()
        .chain(names)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(format!(
        "certificate: {}\nkey: {}\ngrants: {grants}\n",
        cert_path.display(),
        key_path.display()
    ))
}

/// Writes a file (a secret readable by its owner only), replacing an older one.
pub(crate) fn write(path: &Path, contents: &str, secret: bool) -> Result<(), RunError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let what = path.display().to_string();
    let mut file = options.open(path).map_err(|e| failed(&what, e))?;
    if secret {
        // An older file keeps its mode when opened: narrow it too.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed(&what, e))?;
    }
    file.write_all(contents.as_bytes())
        .map_err(|e| failed(&what, e))
}

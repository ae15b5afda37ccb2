//! A small certificate tool for trying conc's mutual TLS: makes a development certificate
//! authority and node certificates signed by it, with rcgen.
//!
//! ```text
//! cargo run --example certs -- ca [--dir ./certs] [--force]
//! cargo run --example certs -- node 127.0.0.1 [--dir ./certs] [--days 825]
//! cargo run --example certs -- node node1.example [--dir ./certs]
//! ```
//!
//! `ca` writes `ca.pem` (the CA certificate, which every node is given) and `ca.key` (its
//! private key, which only this tool needs). `node NAME` writes `NAME.pem` and `NAME.key`: a
//! certificate for the node host `NAME` (an IP address or a DNS name; a `:port` suffix is
//! ignored, since a node's certificate names its host), signed by the CA in the same directory.
//! Every file is written with mode 0600 and the directory is created with mode 0700.
//!
//! A node named `HOST:PORT` then runs with
//! `TlsIdentity::from_pem_files("certs/ca.pem", "certs/HOST.pem", "certs/HOST.key")`, on pooled
//! TCP (`Tcp::pooled().with_tls(TlsMode::Mutual(identity))`) or QUIC
//! (`Quic::new().with_mutual_tls(identity)`). These are development certificates: keep the CA
//! key off the nodes, and use your organisation's CA in production.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Makes a development CA and node certificates for conc's mutual TLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a development CA: DIR/ca.pem and DIR/ca.key.
    Ca {
        /// Where to write the files.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every node certificate it signed stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Make a certificate for the node host NAME, signed by DIR/ca.pem and DIR/ca.key:
    /// DIR/NAME.pem and DIR/NAME.key.
    Node {
        /// The node's host: an IP address (127.0.0.1, ::1) or a DNS name (node1.example). A
        /// `:port` suffix (the node name) is accepted and ignored.
        name: String,
        /// Where the CA is and the files go.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Ca { dir, days, force } => make_ca(&dir, days, force),
        Command::Node { name, dir, days } => make_node(&name, &dir, days),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The host of a node name: `127.0.0.1:9000` → `127.0.0.1`, `[::1]:9000` → `::1`,
/// `node1.example:9000` → `node1.example`; a bare host is returned as it is.
fn host_of(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("the node name is empty".into());
    }
    if let Ok(addr) = name.parse::<SocketAddr>() {
        return Ok(addr.ip().to_string());
    }
    if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let host = match name.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        Some(_) => return Err(format!("{name:?} is neither a host nor host:port")),
        None => name,
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(format!("{host:?} is not a valid DNS name or IP address"));
    }
    Ok(host.to_ascii_lowercase())
}

/// Today's date (UTC) as (year, month, day), from the system clock.
fn today() -> (i32, u8, u8) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_from_days((secs / 86_400) as i64)
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Sets `params` valid from yesterday (to tolerate clock skew between nodes) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let (y, m, d) = today();
    let start = rcgen::date_time_ymd(y, m, d) - std::time::Duration::from_secs(86_400);
    params.not_before = start;
    params.not_after = start + std::time::Duration::from_secs(86_400 * (u64::from(days) + 1));
}

/// Creates `dir` (mode 0700) if it does not exist.
fn ensure_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Writes `contents` to `path` with mode 0600 (also when the file already existed with other
/// permissions).
fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn make_ca(dir: &Path, days: u32, force: bool) -> Result<(), String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(format!(
            "{} already has a CA; pass --force to replace it (certificates it signed stop \
             being trusted)",
            dir.display()
        ));
    }
    ensure_dir(dir)?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| format!("ca params: {e}"))?;
    let mut dn = DistinguishedName::new();
    // A random suffix tells two development CAs apart (in TLS errors and in trust stores).
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| format!("no randomness: {e}"))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    dn.push(DnType::CommonName, format!("conc development CA {tag}"));
    dn.push(DnType::OrganizationName, "conc");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&cert_path, &cert.pem())?;
    println!("wrote {} (give it to every node)", cert_path.display());
    println!(
        "wrote {} (keep it private; only this tool needs it)",
        key_path.display()
    );
    Ok(())
}

fn make_node(name: &str, dir: &Path, days: u32) -> Result<(), String> {
    let host = host_of(name)?;
    let (ca_cert_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(format!(
            "no CA in {} (run `certs ca --dir {}` first)",
            dir.display(),
            dir.display()
        ));
    }
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)
        .map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&read(&ca_cert_path)?)
        .map_err(|e| format!("{}: {e}", ca_cert_path.display()))?;
    // The issuer: the CA's name and key identifier, as reloaded; it signs with the CA's key.
    let ca = ca_params.self_signed(&ca_key).map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            ca_key_path.display(),
            ca_cert_path.display()
        )
    })?;

    // The subject alternative name: an IP address or a DNS name, as rcgen decides from the text.
    let mut params = CertificateParams::new(vec![host.clone()])
        .map_err(|e| format!("{host:?} cannot be put in a certificate: {e}"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host.as_str());
    dn.push(DnType::OrganizationName, "conc");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A node is a TLS server to the peers that connect to it and a client of those it connects
    // to.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| format!("cannot sign the certificate for {host}: {e}"))?;

    let (cert_path, key_path) = (
        dir.join(format!("{host}.pem")),
        dir.join(format!("{host}.key")),
    );
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&cert_path, &cert.pem())?;
    println!("wrote {} (certificate for {host})", cert_path.display());
    println!("wrote {} (its private key)", key_path.display());
    let node = if host.contains(':') {
        format!("[{host}]:PORT")
    } else {
        format!("{host}:PORT")
    };
    println!(
        "run the node as {node} with TlsIdentity::from_pem_files({:?}, {:?}, {:?})",
        ca_cert_path.display().to_string(),
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    Ok(())
}

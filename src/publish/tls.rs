//! TLS for `mqtts://` brokers, with rustls and its ring provider: the broker's certificate is
//! checked against `ca_file` (or the system's authorities without one), and a client
//! certificate is shown when the broker asks for one.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::MqttBroker;

/// The client configuration for `broker`; the error names the file and what is wrong with it.
pub fn client_config(broker: &MqttBroker) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &broker.ca_file {
        Some(file) => {
            for certificate in certificates(file)? {
                roots.add(certificate).map_err(|error| {
                    format!("{}: not a usable CA certificate: {error}", file.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for certificate in found.certs {
                // A system certificate rustls cannot read is skipped, as browsers do.
                let _ = roots.add(certificate);
            }
            if roots.is_empty() {
                return Err(
                    "no ca_file, and no certificate authorities found on this system".into(),
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    let config = match (&broker.client_cert, &broker.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                format!("{}: no private key could be read: {error}", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("client certificate and key: {error}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
pub fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(file)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("{}: cannot read certificates: {error}", file.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(certificates)
}

/// Checks the TLS files of `broker` as `visiond check` does: readable, and what they claim.
pub fn check_files(broker: &MqttBroker) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    for (key, file) in [
        ("ca_file", &broker.ca_file),
        ("client_cert", &broker.client_cert),
    ] {
        if let Some(file) = file
            && let Err(problem) = certificates(file)
        {
            problems.push((key, problem));
        }
    }
    if let Some(file) = &broker.client_key
        && let Err(error) = PrivateKeyDer::from_pem_file(file)
    {
        problems.push((
            "client_key",
            format!("{}: no private key could be read: {error}", file.display()),
        ));
    }
    problems
}

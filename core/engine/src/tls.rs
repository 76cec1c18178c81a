//! rustls configurations: termination on listeners (certificates chosen by SNI, ALPN,
//! optional client certificates) and origination to clusters (SNI, CA bundle or system
//! roots, ALPN, client certificates). Files are read when a snapshot compiles, so
//! re-applying the config reloads them; established connections keep the config they
//! started with.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{CertificateSpec, ClientTlsSpec, ServerTlsSpec};
use crate::error::Error;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(min: &str, path: &str) -> Result<&'static [&'static SupportedProtocolVersion], Error> {
    static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        "1.2" => Ok(&BOTH),
        "1.3" => Ok(&TLS13_ONLY),
        other => Err(Error::config(path, format!("{other:?}: the oldest TLS version is \"1.2\" or \"1.3\""))),
    }
}

fn read_certs(file: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::config(path, format!("cannot read certificates from {file}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config(path, format!("{file} holds no PEM certificate")));
    }
    Ok(certs)
}

fn read_key(file: &str, path: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(file)
        .map_err(|e| Error::config(path, format!("cannot read a private key from {file}: {e}")))
}

fn read_roots(file: &str, path: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(file, path)? {
        roots.add(cert).map_err(|e| Error::config(path, format!("{file}: {e}")))?;
    }
    Ok(roots)
}

fn certified_key(
    spec: &CertificateSpec,
    path: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let chain = read_certs(&spec.cert, &format!("{path}.cert"))?;
    let key = read_key(&spec.key, &format!("{path}.key"))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        Error::config(format!("{path}.key"), format!("the key does not fit the certificate: {e}"))
    })?;
    Ok(key)
}

fn alpn(protocols: &[String]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// The server side of a listener with TLS.
pub(crate) fn server_config(spec: &ServerTlsSpec, path: &str) -> Result<Arc<ServerConfig>, Error> {
    if spec.certificates.is_empty() {
        return Err(Error::config(format!("{path}.certificates"), "give at least one certificate"));
    }
    let provider = provider();
    let keys = spec
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| certified_key(c, &format!("{path}.certificates.{i}"), &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions(&spec.min_version, &format!("{path}.min_version"))?)
        .map_err(|e| Error::config(format!("{path}.min_version"), e.to_string()))?;
    let builder = match &spec.client_ca {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let roots = Arc::new(read_roots(file, &format!("{path}.client_ca"))?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider));
            let verifier =
                if spec.require_client_certificate { verifier } else { verifier.allow_unauthenticated() };
            let verifier =
                verifier.build().map_err(|e| Error::config(format!("{path}.client_ca"), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { keys }));
    config.alpn_protocols = alpn(&spec.alpn);
    Ok(Arc::new(config))
}

/// Picks the first certificate whose names cover the client's SNI; the first certificate
/// when there is no SNI or none covers it (as Envoy's default filter chain does).
///
/// rustls' own `ResolvesServerCertUsingSni` needs every name listed up front; this reads
/// the names from the certificates themselves, so the config only lists files.
#[derive(Debug)]
struct BySni {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            let name = ServerName::try_from(sni).ok()?;
            self.keys.iter().find(|k| {
                k.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        chosen.or_else(|| self.keys.first()).cloned()
    }
}

/// The client side of a cluster with TLS.
pub(crate) fn client_config(spec: &ClientTlsSpec, path: &str) -> Result<ClientConfig, Error> {
    let provider = provider();
    let roots = match &spec.ca {
        Some(file) => read_roots(file, &format!("{path}.ca"))?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Error::config(
                    format!("{path}.ca"),
                    "no CA given and the system has no root certificates",
                ));
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions("1.2", path)?)
        .map_err(|e| Error::config(path, e.to_string()))?
        .with_root_certificates(roots);
    let config = match &spec.client_certificate {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let cpath = format!("{path}.client_certificate");
            let chain = read_certs(&cert.cert, &format!("{cpath}.cert"))?;
            let key = read_key(&cert.key, &format!("{cpath}.key"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| Error::config(cpath, e.to_string()))?
        }
    };
    if let Some(sni) = &spec.sni {
        ServerName::try_from(sni.as_str())
            .map_err(|_| Error::config(format!("{path}.sni"), format!("{sni:?} is not a server name")))?;
    }
    Ok(config)
}

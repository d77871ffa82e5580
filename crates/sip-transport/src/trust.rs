//! trust: the CA files TLS verifies peers against (`client_ca_file` for client
//! certificates, `ca_file` for the servers we connect to), re-read when they change like
//! the certificate itself: a trunk's new CA is trusted, a revoked one no longer, without
//! a restart. rustls fixes a configuration's verifiers when it is built, so each is a
//! thin verifier delegating to the one built from the files' current contents.
//!
//! A client is sent no CA names as hints (a list that can be replaced cannot be lent out
//! to the handshake): it presents the certificate it is configured with, as trunks do.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, Error};

use crate::tls::{ClientAuth, TlsError};

/// The verifier built from a CA file's current contents, replaced when it reloads.
#[derive(Debug)]
struct Current<T: ?Sized>(RwLock<Arc<T>>);

impl<T: ?Sized> Current<T> {
    fn get(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, v: Arc<T>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
    }
}

/// Client certificates, verified against `client_ca_file` (never built for
/// [`ClientAuth::Off`]).
#[derive(Debug)]
pub(crate) struct ClientTrust {
    mode: ClientAuth,
    current: Current<dyn ClientCertVerifier>,
}

impl ClientTrust {
    /// From the CA file's contents now.
    pub fn new(
        ca: &Path,
        mode: ClientAuth,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ClientTrust, TlsError> {
        Ok(ClientTrust {
            mode,
            current: Current(RwLock::new(client_verifier(ca, mode, provider)?)),
        })
    }

    /// Re-read the CA file; on an error the verifier in use stays.
    pub fn reload(&self, ca: &Path, provider: &Arc<CryptoProvider>) -> Result<(), TlsError> {
        self.current.set(client_verifier(ca, self.mode, provider)?);
        Ok(())
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.get()
    }
}

fn client_verifier(
    ca: &Path,
    mode: ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(crate::tls::read_roots(ca)?);
    let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    let b = if mode == ClientAuth::Optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    b.build().map_err(|e| crate::tls::file_error(ca, e))
}

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// The servers we connect to, verified against `ca_file`.
#[derive(Debug)]
pub(crate) struct ServerTrust {
    current: Current<WebPkiServerVerifier>,
}

impl ServerTrust {
    /// From the CA file's contents now.
    pub fn new(ca: &Path, provider: &Arc<CryptoProvider>) -> Result<ServerTrust, TlsError> {
        Ok(ServerTrust {
            current: Current(RwLock::new(server_verifier(ca, provider)?)),
        })
    }

    /// Re-read the CA file; on an error the verifier in use stays.
    pub fn reload(&self, ca: &Path, provider: &Arc<CryptoProvider>) -> Result<(), TlsError> {
        self.current.set(server_verifier(ca, provider)?);
        Ok(())
    }

    fn get(&self) -> Arc<WebPkiServerVerifier> {
        self.current.get()
    }
}

fn server_verifier(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let roots = Arc::new(crate::tls::read_roots(ca)?);
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| crate::tls::file_error(ca, e))
}

impl ServerCertVerifier for ServerTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.get()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

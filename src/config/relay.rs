//! A relay of the company's own: its URL and the PEM of the CA that signed
//! its certificate. cluster.toml names it for every member (`[network]
//! relay`, `relay_ca`); malai.toml may override it per device, and
//! `cluster-info.toml` carries it for a machine that has joined but holds
//! no config yet. Both are checked when read, so a bad URL or PEM is a
//! diagnostic at its key, never a failure at the first dial.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnRelay {
    /// As written; `url()` parses it (checked when read).
    pub url: String,
    /// PEM of the CA that signed the relay's certificate; `None`: the roots
    /// iroh trusts by default.
    pub ca_pem: Option<String>,
}

impl OwnRelay {
    pub fn url(&self) -> iroh::RelayUrl {
        self.url.parse().expect("relay URL checked when read")
    }

    /// The CA's certificates, for iroh's TLS.
    pub fn ca(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.ca_pem
            .as_deref()
            .map(|pem| certificates(pem).expect("relay CA checked when read"))
    }
}

/// Checks a relay URL: `https://HOST[:PORT]` (or `http://` for a relay
/// without TLS, which then never upgrades a path to direct).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("relay {url:?} is not an http:// or https:// URL"));
    }
    url.parse::<iroh::RelayUrl>()
        .map(|_| ())
        .map_err(|e| format!("relay {url:?} is not a URL: {e}"))
}

/// The certificates in a PEM text: at least one, all well-formed.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_certificates_are_checked() {
        assert!(check_url("https://10.0.0.1:3443").is_ok());
        assert!(check_url("http://relay.example.com:3340").is_ok());
        assert!(check_url("relay.example.com").is_err());
        assert!(check_url("https://").is_err());
        assert!(certificates("").is_err());
        assert!(
            certificates("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}

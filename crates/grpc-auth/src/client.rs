//! The client side: an interceptor that sends the caller's token on every call (and the
//! caller's trace context, when traces are on).

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::Token;

/// A channel whose calls carry a bearer token: what every sipcluster client talks over.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each call (nothing without a token: the
/// server then answers UNAUTHENTICATED, which is what a caller without credentials
/// should see).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<redacted>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    /// The interceptor for `token`.
    #[must_use]
    pub fn new(token: Option<&Token>) -> Bearer {
        Bearer(token.and_then(|t| {
            // A token is visible ASCII by construction, so this cannot fail; a value that
            // did would be sent as no token (and refused) rather than panic.
            let mut v = MetadataValue::try_from(format!("Bearer {}", t.expose())).ok()?;
            // Keeps HTTP/2 header compression from indexing the secret (HPACK "never
            // indexed"), as for any credential.
            v.set_sensitive(true);
            Some(v)
        }))
    }

    /// `channel` with this token on every call.
    #[must_use]
    pub fn channel(self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // Every call of a sipcluster client goes through here: the one place that carries
        // the caller's trace on (called within the caller's span).
        telemetry::trace::inject_grpc(req.metadata_mut());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_added_and_never_shown() {
        let t = Token::new("edge-token-0123456789").unwrap();
        let mut b = Bearer::new(Some(&t));
        let r = b.call(Request::new(())).unwrap();
        let v = r.metadata().get("authorization").unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer edge-token-0123456789");
        assert!(!format!("{b:?}").contains("edge-token"));
        let r = Bearer::new(None).call(Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
    }
}

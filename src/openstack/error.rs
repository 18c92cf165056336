//! Errors of the OpenStack client.
//!
//! Every failed API call keeps what an operator needs to find it in the OpenStack logs: the
//! service, the operation, the HTTP status, the OpenStack request id and the message the service
//! returned. Secrets never appear in these errors.
//!
//! The `Display` of every error is written for people: it ends up in `Ready` condition messages
//! and events. It never contains a Rust `Debug` rendering, names the URL (without query,
//! fragment or user info) and the cause in words when a service cannot be reached, and copies
//! at most [`MAX_MESSAGE_BYTES`] of any text the cloud sent (the cloud belongs to a tenant, the
//! conditions to the shared management cluster).

use std::borrow::Cow;
use std::time::Duration;

use reqwest::StatusCode;

/// Result of OpenStack client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest text, in bytes, copied from a cloud's answer (or any other foreign text) into an
/// error's `Display`: 1 KiB, cut on a UTF-8 character boundary and marked with `…`.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// An OpenStack client error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The clouds.yaml (or the identityRef Secret holding it) is unusable.
    #[error("invalid cloud configuration: {}", capped(.0))]
    InvalidCloudConfig(String),

    /// The `cacert` of the identity is unusable: not PEM, no certificate in it, or a
    /// certificate that does not parse. The text says which.
    #[error("the identity's cacert is unusable: {}", capped(.0))]
    InvalidCaCert(String),

    /// The service answered with an HTTP error status (or a redirect, which capow does not
    /// follow).
    #[error(transparent)]
    Api(#[from] ApiError),

    /// The request did not get a complete HTTP answer: connection refused, DNS failure, TLS
    /// failure, timeout, connection reset. The `Display` names the URL and the cause in words,
    /// e.g. `cannot reach Keystone at https://keystone.example:5000/v3/auth/tokens: connection
    /// refused`.
    #[error("{}", transport_message(.service, .url, .source))]
    Transport {
        /// Service type, e.g. `compute`, or `identity` for Keystone.
        service: &'static str,
        /// Operation name, e.g. `server_create`.
        operation: &'static str,
        /// The URL asked, without query, fragment or user info.
        url: String,
        /// The transport error (its own URL removed).
        #[source]
        source: reqwest::Error,
    },

    /// The answer was not the JSON the API reference documents.
    #[error("the {service} {operation} response is not the JSON the API reference describes: {}", capped(&.source.to_string()))]
    Decode {
        /// Service type.
        service: &'static str,
        /// Operation name.
        operation: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// The service catalog has no endpoint for the service, interface and region.
    #[error(
        "the service catalog has no {service} endpoint with interface \"{}\" {}",
        capped(.interface),
        .region.as_deref().map_or_else(|| "in any region".to_owned(), |r| format!("in region \"{}\"", capped(r)))
    )]
    EndpointNotFound {
        /// Service type.
        service: &'static str,
        /// Endpoint interface (`public`, `internal`, `admin`).
        interface: String,
        /// Region, if one was asked for.
        region: Option<String>,
    },

    /// A success answer's body is larger than `ClientOptions::max_response_bytes` (16 MiB by
    /// default); it was not read past the limit. (An error answer's body is read up to 64 KiB
    /// and reported as [`Error::Api`].)
    #[error("the {service} {operation} response is larger than {}, the most capow reads", bytes_in_words(.limit))]
    ResponseTooLarge {
        /// Service type.
        service: &'static str,
        /// Operation name.
        operation: &'static str,
        /// The limit, in bytes.
        limit: usize,
    },

    /// A request that is not idempotent (a `POST` that creates a server, port, network, ...)
    /// failed in a way that does not tell whether the service carried it out: a 5xx answer,
    /// a timeout or a connection lost after the request was sent, or a success answer that
    /// could not be read. The session never sends such a request again by itself; the caller
    /// must look for the resource (by the tag or metadata it put on it) before creating it
    /// again. See [`Error::is_outcome_unknown`].
    #[error("{source} (the request may have taken effect all the same)")]
    OutcomeUnknown {
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

/// An HTTP error answer of an OpenStack service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service} {operation} failed with HTTP {status}{}: {}", request_id.as_ref().map(|id| format!(" (request {})", capped(id))).unwrap_or_default(), capped(.message))]
pub struct ApiError {
    /// Service type, e.g. `compute`.
    pub service: &'static str,
    /// Operation name, e.g. `server_create`.
    pub operation: &'static str,
    /// HTTP status.
    pub status: StatusCode,
    /// `X-OpenStack-Request-Id` (or `X-Compute-Request-Id`) of the failed request.
    pub request_id: Option<String>,
    /// The message from the service's error body (Nova `{"<kind>": {"message"}}`, Neutron
    /// `{"NeutronError": {"message"}}`, Keystone `{"error": {"message"}}`), or the body text;
    /// at most [`MAX_MESSAGE_BYTES`].
    pub message: String,
    /// Delay the service asked for with `Retry-After` (429/503).
    pub retry_after: Option<Duration>,
}

impl Error {
    /// The error itself, or the one inside [`Error::OutcomeUnknown`].
    fn cause(&self) -> &Error {
        match self {
            Error::OutcomeUnknown { source } => source,
            e => e,
        }
    }

    /// HTTP status of an API error (also inside [`Error::OutcomeUnknown`]).
    pub fn status(&self) -> Option<StatusCode> {
        match self.cause() {
            Error::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// True for 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// True when Keystone refused the credentials (401 on token issue).
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// True when a non-idempotent request (a create) may or may not have been carried out:
    /// the service answered 5xx, the answer timed out or the connection broke after the
    /// request was sent, or a success answer could not be read.
    ///
    /// Nova, Neutron and Cinder have no idempotency key for creates: the request bodies of
    /// <https://docs.openstack.org/api-ref/compute/#create-server>,
    /// <https://docs.openstack.org/api-ref/network/v2/#create-port> and
    /// <https://docs.openstack.org/api-ref/block-storage/v3/#create-a-volume> have no such
    /// field, and `X-OpenStack-Request-ID` only correlates logs. Sending the same `POST` again
    /// can therefore create a second server, port or volume. A caller that sees this error
    /// must look the resource up by the tag or metadata it put on it before it creates it
    /// again. The session itself never resends such a request (RFC 9110 §9.2.2: a client
    /// should not retry a non-idempotent request automatically unless it knows the request
    /// was never applied).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// True when the request exceeded a quota: Nova answers 403 "Quota exceeded" for instance,
    /// core and RAM quotas and 413 for some others; Neutron answers 409 `OverQuota`.
    pub fn is_quota_exceeded(&self) -> bool {
        match self.cause() {
            Error::Api(e) => {
                let quota_message = e.message.contains("Quota exceeded")
                    || e.message.contains("OverQuota")
                    || e.message.contains("quota exceeded");
                e.status == StatusCode::PAYLOAD_TOO_LARGE
                    || (matches!(e.status, StatusCode::FORBIDDEN | StatusCode::CONFLICT)
                        && quota_message)
            }
            _ => false,
        }
    }

    /// True for errors caused by the request itself (4xx other than 401/404/408/409/429), which
    /// retrying unchanged will not fix.
    pub fn is_client_error(&self) -> bool {
        match self.status() {
            Some(s) => {
                s.is_client_error()
                    && !matches!(
                        s,
                        StatusCode::UNAUTHORIZED
                            | StatusCode::NOT_FOUND
                            | StatusCode::REQUEST_TIMEOUT
                            | StatusCode::CONFLICT
                            | StatusCode::TOO_MANY_REQUESTS
                    )
            }
            None => false,
        }
    }

    /// Delay the service asked for, if it sent `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.cause() {
            Error::Api(e) => e.retry_after,
            _ => None,
        }
    }
}

/// `text` cut to at most [`MAX_MESSAGE_BYTES`] on a character boundary, with `…` appended when
/// it was cut.
pub(crate) fn capped(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_MESSAGE_BYTES {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// `bytes` as `16 MiB`, `64 KiB` or `100 bytes`.
pub(crate) fn bytes_in_words(bytes: &usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match *bytes {
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// The product name people know a service by, for messages.
fn service_title(service: &str) -> &str {
    match service {
        "identity" => "Keystone",
        "compute" => "Nova",
        "network" => "Neutron",
        "image" => "Glance",
        "block-storage" => "Cinder",
        other => other,
    }
}

/// `url` without user info, query and fragment (they may carry secrets), for messages. Text
/// that is not a URL is returned cut at the first `?` or `#`.
pub(crate) fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    }
}

fn transport_message(service: &str, url: &str, source: &reqwest::Error) -> String {
    format!(
        "cannot reach {} at {}: {}",
        service_title(service),
        capped(url),
        capped(&transport_cause(source))
    )
}

/// The cause of a transport error in words, found by walking its `source()` chain: the
/// connection was refused or reset, the request timed out, the host name did not resolve, or
/// the TLS handshake failed (and why). Falls back to the innermost error's `Display`; never
/// uses `Debug`, and never reqwest's own `Display`, which embeds the URL with its query.
pub(crate) fn transport_cause(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    use std::io::ErrorKind;

    let reading = if error.is_body() || error.is_decode() {
        " while reading the answer"
    } else {
        ""
    };
    let mut innermost: Option<String> = None;
    let mut dns = false;
    let mut next: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return tls_cause(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::ConnectionRefused => return "connection refused".into(),
                ErrorKind::ConnectionReset => {
                    return format!("the connection was reset{reading}");
                }
                ErrorKind::ConnectionAborted => {
                    return format!("the connection was aborted{reading}");
                }
                ErrorKind::TimedOut => return format!("timed out{reading}"),
                ErrorKind::UnexpectedEof => {
                    return format!("the server closed the connection{reading}");
                }
                _ => {}
            }
            // `io::Error::source` skips the error it wraps (tokio-rustls wraps a
            // `rustls::Error` in one, and hyper-util that in another): look at it next.
            if let Some(inner) = io.get_ref() {
                innermost = Some(e.to_string());
                next = Some(inner);
                continue;
            }
        }
        let text = e.to_string();
        // hyper-util's connector reports a failed name lookup as "dns error".
        dns |= text.starts_with("dns error");
        innermost = Some(text);
        next = e.source();
    }
    if error.is_timeout() {
        return format!("timed out{reading}");
    }
    let detail = innermost.unwrap_or_else(|| "unknown transport error".into());
    if dns {
        return format!("the host name does not resolve ({detail})");
    }
    if reading.is_empty() {
        detail
    } else {
        format!("the connection broke{reading} ({detail})")
    }
}

/// A TLS failure in words; the certificate problems name what to check.
fn tls_cause(error: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(c) => match c {
            // BadSignature: a CA of the same name, but not the key that signed the certificate
            // (typically a CA that was issued again).
            C::UnknownIssuer | C::BadSignature => {
                "TLS: the server's certificate is not signed by a trusted CA \
                 (the identity's cacert, or the system's CAs without one)"
                    .into()
            }
            C::NotValidForName => {
                "TLS: the server's certificate is not valid for this host name".into()
            }
            C::NotValidForNameContext { presented, .. } => {
                // webpki gives the names in Debug form, e.g. `DnsName("keystone.example")`:
                // keep the quoted name.
                let names: Vec<&str> = presented
                    .iter()
                    .filter_map(|n| n.split('"').nth(1))
                    .collect();
                let valid_for = if names.is_empty() {
                    String::new()
                } else {
                    format!(" (it is valid for {})", capped(&names.join(", ")))
                };
                format!("TLS: the server's certificate is not valid for this host name{valid_for}")
            }
            C::Expired | C::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet".into()
            }
            C::Revoked => "TLS: the server's certificate is revoked".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "TLS: the server's certificate is not meant for TLS servers (extended key usage)"
                    .into()
            }
            C::BadEncoding => "TLS: the server's certificate does not parse".into(),
            // The other variants' Display falls back to their Debug form (byte vectors).
            _ => "TLS: the server's certificate is not accepted (unsupported signature \
                  algorithm, critical extension or revocation status)"
                .into(),
        },
        rustls::Error::AlertReceived(_) => "TLS handshake failed: the server refused it (does it \
                                            want a client certificate, or a TLS version or cipher \
                                            capow does not offer?)"
            .into(),
        rustls::Error::InvalidMessage(_) => {
            "TLS handshake failed: the server does not speak TLS at this address \
             (an http:// URL given as https://?)"
                .into()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Extracts the human-readable message from an OpenStack error body.
///
/// Handles the shapes of Nova (`{"itemNotFound": {"code": 404, "message": "..."}}`), Neutron
/// (`{"NeutronError": {"type": "...", "message": "..."}}`), Keystone (`{"error": {"message"}}`),
/// Glance and Cinder (`{"badRequest": {"message"}}` or plain text/HTML), cut to
/// [`MAX_MESSAGE_BYTES`].
pub(crate) fn message_from_body(body: &str) -> String {
    fn find_message(v: &serde_json::Value) -> Option<String> {
        let obj = v.as_object()?;
        if let Some(m) = obj.get("message").and_then(|m| m.as_str()) {
            return Some(m.to_owned());
        }
        if let Some(m) = obj.get("faultstring").and_then(|m| m.as_str()) {
            return Some(m.to_owned());
        }
        obj.values().find_map(find_message)
    }
    let trimmed = body.trim();
    let message = match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(v) => find_message(&v).unwrap_or_else(|| trimmed.to_owned()),
        Err(_) => {
            // Glance and some proxies answer with HTML; keep the text, without tags, short.
            let mut text = String::with_capacity(trimmed.len());
            let mut in_tag = false;
            for c in trimmed.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            text.chars().take(512).collect()
        }
    };
    capped(&message).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> Error {
        Error::Api(ApiError {
            service: "compute",
            operation: "server_create",
            status: StatusCode::from_u16(status).unwrap(),
            request_id: Some("req-1".into()),
            message: message.into(),
            retry_after: None,
        })
    }

    #[test]
    fn messages_of_each_service_shape() {
        assert_eq!(
            message_from_body(
                r#"{"itemNotFound": {"code": 404, "message": "Flavor x could not be found."}}"#
            ),
            "Flavor x could not be found."
        );
        assert_eq!(
            message_from_body(
                r#"{"NeutronError": {"type": "NetworkNotFound", "message": "Network n could not be found.", "detail": ""}}"#
            ),
            "Network n could not be found."
        );
        assert_eq!(
            message_from_body(
                r#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            message_from_body(
                "<html><body><h1>404 Not Found</h1>\n No image found with ID x </body></html>"
            ),
            "404 Not Found No image found with ID x"
        );
    }

    #[test]
    fn quota_errors_are_recognised_by_status_and_message() {
        assert!(
            api(
                403,
                "Quota exceeded for cores: Requested 4, but already used 398 of 400 cores"
            )
            .is_quota_exceeded()
        );
        assert!(api(413, "anything").is_quota_exceeded());
        assert!(api(409, "Quota exceeded for resources: ['port'].").is_quota_exceeded());
        assert!(
            !api(403, "Policy doesn't allow os_compute_api:servers:create").is_quota_exceeded()
        );
        assert!(!api(400, "Invalid flavorRef").is_quota_exceeded());
    }

    #[test]
    fn client_errors_exclude_retryable_statuses() {
        assert!(api(400, "bad").is_client_error());
        assert!(api(403, "policy").is_client_error());
        assert!(!api(404, "gone").is_client_error());
        assert!(!api(409, "conflict").is_client_error());
        assert!(!api(429, "slow down").is_client_error());
        assert!(!api(503, "unavailable").is_client_error());
    }

    #[test]
    fn foreign_text_is_capped_on_a_char_boundary() {
        // 'é' is two bytes: an odd limit would split one without the boundary check.
        let long = "é".repeat(4000);
        let shown = api(500, &long).to_string();
        let prefix =
            "compute server_create failed with HTTP 500 Internal Server Error (request req-1): ";
        let message = shown.strip_prefix(prefix).unwrap();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with("é…"));
        assert_eq!(capped("short"), "short");
        // The stored message is capped too (a tenant's cloud chooses the body).
        let body = format!(
            r#"{{"badRequest": {{"message": "{}"}}}}"#,
            "x".repeat(100_000)
        );
        assert!(message_from_body(&body).len() <= MAX_MESSAGE_BYTES);
        let endpoint = Error::EndpointNotFound {
            service: "image",
            interface: "public".into(),
            region: None,
        };
        assert_eq!(
            endpoint.to_string(),
            "the service catalog has no image endpoint with interface \"public\" in any region"
        );
    }

    #[test]
    fn urls_in_messages_lose_credentials_query_and_fragment() {
        assert_eq!(
            redacted_url("https://u:pw@keystone.example:5000/v3/auth/tokens?x=secret#f"),
            "https://keystone.example:5000/v3/auth/tokens"
        );
        assert_eq!(redacted_url("not a url?token=1"), "not a url");
    }

    #[test]
    fn display_names_service_operation_status_and_request_id() {
        assert_eq!(
            api(404, "Flavor x could not be found.").to_string(),
            "compute server_create failed with HTTP 404 Not Found (request req-1): Flavor x could not be found."
        );
    }
}

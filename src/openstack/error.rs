//! Errors of the OpenStack client.
//!
//! Every failed API call keeps what an operator needs to find it in the OpenStack logs: the
//! service, the operation, the HTTP status, the OpenStack request id and the message the service
//! returned. Secrets never appear in these errors.

use std::time::Duration;

use reqwest::StatusCode;

/// Result of OpenStack client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An OpenStack client error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The clouds.yaml (or the identityRef Secret holding it) is unusable.
    #[error("invalid cloud configuration: {0}")]
    InvalidCloudConfig(String),

    /// The `cacert` of the identity is not a PEM certificate bundle.
    #[error("invalid cacert: {0}")]
    InvalidCaCert(String),

    /// The service answered with an HTTP error status.
    #[error(transparent)]
    Api(#[from] ApiError),

    /// The request did not get an HTTP answer (connection refused, TLS failure, timeout).
    #[error("failed to reach {service} for {operation}")]
    Transport {
        /// Service type, e.g. `compute`.
        service: &'static str,
        /// Operation name, e.g. `server_create`.
        operation: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },

    /// The answer was not the JSON the API reference documents.
    #[error("failed to decode the {service} {operation} response")]
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
        "the service catalog has no {service} endpoint with interface {interface:?} in region {region:?}"
    )]
    EndpointNotFound {
        /// Service type.
        service: &'static str,
        /// Endpoint interface (`public`, `internal`, `admin`).
        interface: String,
        /// Region, if one was asked for.
        region: Option<String>,
    },
}

/// An HTTP error answer of an OpenStack service.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{service} {operation} failed with HTTP {status}{}: {message}", request_id.as_ref().map(|id| format!(" (request {id})")).unwrap_or_default())]
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
    /// `{"NeutronError": {"message"}}`, Keystone `{"error": {"message"}}`), or the body text.
    pub message: String,
    /// Delay the service asked for with `Retry-After` (429/503).
    pub retry_after: Option<Duration>,
}

impl Error {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
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

    /// True when the request exceeded a quota: Nova answers 403 "Quota exceeded" for instance,
    /// core and RAM quotas and 413 for some others; Neutron answers 409 `OverQuota`.
    pub fn is_quota_exceeded(&self) -> bool {
        match self {
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
        match self {
            Error::Api(e) => e.retry_after,
            _ => None,
        }
    }
}

/// Extracts the human-readable message from an OpenStack error body.
///
/// Handles the shapes of Nova (`{"itemNotFound": {"code": 404, "message": "..."}}`), Neutron
/// (`{"NeutronError": {"type": "...", "message": "..."}}`), Keystone (`{"error": {"message"}}`),
/// Glance and Cinder (`{"badRequest": {"message"}}` or plain text/HTML).
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
    match serde_json::from_str::<serde_json::Value>(trimmed) {
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
    }
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
    fn display_names_service_operation_status_and_request_id() {
        assert_eq!(
            api(404, "Flavor x could not be found.").to_string(),
            "compute server_create failed with HTTP 404 Not Found (request req-1): Flavor x could not be found."
        );
    }
}

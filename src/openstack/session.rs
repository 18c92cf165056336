//! An authenticated connection to one cloud as one identity: Keystone v3 token issue and
//! renewal, the service catalog, and the request path every API call goes through.
//!
//! The request path protects the cloud, which capow shares with its other users, and the
//! manager, which the clouds of many tenants share:
//! - one token per identity, renewed `renew_before` ahead of its expiry, or at half its
//!   lifetime when that comes first (so a short-lived token is not issued again for every
//!   call), or after a 401, and never issued twice concurrently (a renewal lock, checked again
//!   after it is taken);
//! - a per-cloud rate limit (`governor`) and a bound on requests in flight (a semaphore),
//!   which token requests to Keystone take like every other call;
//! - a bounded number of retries, after the `Retry-After` delay (RFC 9110 §10.2.3, capped)
//!   or an exponential backoff: idempotent requests (GET, HEAD, PUT, DELETE; RFC 9110 §9.2.2)
//!   after 429, 503 or any transport error; other requests (the POSTs that create servers,
//!   ports, networks, volumes) only when the service cannot have carried them out: after 429
//!   (RFC 6585 §4: the request was refused by rate limiting) or a failed connection attempt.
//!   A non-idempotent request whose outcome is unknown (5xx, including 503, which RFC 9110
//!   §15.6.4 does not promise means "not processed"; a timeout or reset after sending; an
//!   unreadable success answer) is never sent again: it fails with
//!   [`Error::OutcomeUnknown`], and the caller looks the resource up by its tag before it
//!   creates it again, because Nova and Neutron have no idempotency key
//!   (see [`Error::is_outcome_unknown`]);
//! - an answer's body is read in chunks against [`ClientOptions::max_response_bytes`]
//!   (error answers against 64 KiB), so a cloud cannot make capow buffer an unbounded body;
//! - redirects are not followed (a 3xx answer is an error naming its target), so the token
//!   and a token request's password never go to an origin other than the one asked;
//! - each service gets only its own microversion header: `OpenStack-API-Version` names the
//!   service type it is meant for (`compute 2.61`, `volume 3.0`; API-SIG microversion
//!   guideline,
//!   <https://specs.openstack.org/openstack/api-sig/guidelines/microversion_specification.html>,
//!   and the Cinder microversion history,
//!   <https://docs.openstack.org/cinder/latest/contributor/api_microversion_history.html>),
//!   and Cinder refuses a request that carries Nova's.
//!
//! Every request is counted in [`Metrics`] by service, operation and HTTP status.
//!
//! Lookups (flavor, image, network, subnet, security group, server group, keypair: the GETs a
//! machine's spec resolves through) can be answered from a short-lived per-identity cache: a
//! session from [`Session::with_lookup_cache`] keeps each GET answer for
//! [`ClientOptions::lookup_cache_ttl`] and lets one request fetch it while concurrent callers of
//! the same URL wait for that answer, so a MachineDeployment scaled by 50 resolves its flavor
//! once, not 50 times. Writes and the listings that decide whether to create something never use
//! it.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::jiff::Timestamp;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock, Semaphore};

use super::clouds::{AuthMethod, CloudConfig, NameOrId, SecretString};
use super::error::{
    ApiError, Error, Result, bytes_in_words, message_from_body, redacted_url, transport_cause,
};
use super::metrics::Metrics;

/// Tunables of the request path. Defaults suit a public cloud shared with other tenants.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Timeout of one HTTP request, in seconds.
    pub request_timeout: Duration,
    /// Sustained requests per second allowed per cloud identity.
    pub requests_per_second: NonZeroU32,
    /// Requests that may be sent in a burst above the sustained rate.
    pub burst: NonZeroU32,
    /// Requests in flight per cloud identity.
    pub max_in_flight: usize,
    /// Retries of one request; which failures are retried depends on the method (see the
    /// module docs).
    pub max_retries: u32,
    /// Upper bound of a single `Retry-After` wait.
    pub max_retry_after: Duration,
    /// Renew the token this long before it expires, in seconds; a token whose lifetime is
    /// shorter than twice this is renewed at half its lifetime instead (see [`renew_after`]).
    pub renew_before: Duration,
    /// How long a lookup answer is reused by [`Session::with_lookup_cache`] sessions, in
    /// seconds; zero disables the cache.
    pub lookup_cache_ttl: Duration,
    /// Largest body of a success answer read, in bytes (16 MiB by default: a listing of
    /// thousands of servers or ports). The service catalog and the endpoints are chosen by
    /// the tenant whose clouds.yaml capow uses, so no answer may grow the shared manager's
    /// memory without bound: the body is read in chunks against this limit and a larger one
    /// fails with [`Error::ResponseTooLarge`]. Error answers are read up to 64 KiB.
    pub max_response_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            requests_per_second: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(40).unwrap_or(NonZeroU32::MIN),
            max_in_flight: 16,
            max_retries: 3,
            max_retry_after: Duration::from_secs(30),
            renew_before: Duration::from_secs(600),
            lookup_cache_ttl: Duration::from_secs(10),
            max_response_bytes: 16 * 1024 * 1024,
        }
    }
}

/// OpenStack services capow calls, with what the request path needs to know about each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// Nova.
    Compute,
    /// Neutron.
    Network,
    /// Glance.
    Image,
    /// Cinder.
    BlockStorage,
}

impl Service {
    /// The service type as used in metrics and errors.
    pub fn name(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Network => "network",
            Service::Image => "image",
            Service::BlockStorage => "block-storage",
        }
    }

    /// Catalog types accepted for the service, preferred first (service-types-authority).
    fn catalog_types(self) -> &'static [&'static str] {
        match self {
            Service::Compute => &["compute"],
            Service::Network => &["network"],
            Service::Image => &["image"],
            Service::BlockStorage => &["block-storage", "volumev3", "volume"],
        }
    }

    /// Version path appended to an unversioned catalog endpoint. Nova and Cinder publish
    /// versioned endpoints (`/v2.1`, `/v3/<project>`); Neutron and Glance usually do not.
    fn version_suffix(self) -> &'static str {
        match self {
            Service::Compute | Service::BlockStorage => "",
            Service::Network => "/v2.0",
            Service::Image => "/v2",
        }
    }

    /// `OpenStack-API-Version` header value, for services with microversions.
    ///
    /// Nova 2.61: flavor `extra_specs` in flavor responses (for GPU and price discovery); it also
    /// covers server tags in create (2.52) and tag filters (2.26). Every Nova since Rocky (2018)
    /// supports it. Cinder 3.0 is the base of the v3 API.
    fn microversion(self) -> Option<(&'static str, &'static str)> {
        match self {
            Service::Compute => Some(("compute 2.61", "2.61")),
            Service::BlockStorage => Some(("volume 3.0", "3.0")),
            Service::Network | Service::Image => None,
        }
    }
}

/// One API call, described as data.
#[derive(Debug)]
pub struct Request {
    /// Target service.
    pub service: Service,
    /// Operation name for metrics and errors, e.g. `server_create`.
    pub operation: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Path below the service's versioned endpoint, starting with `/`.
    pub path: String,
    /// Query parameters (repeated keys allowed).
    pub query: Vec<(String, String)>,
    /// JSON body.
    pub body: Option<Value>,
    /// `OpenStack-API-Version` value replacing the service's default for this call only, e.g.
    /// `volume 3.27` for Cinder attachments.
    pub microversion: Option<&'static str>,
}

impl Request {
    /// A request without query or body.
    pub fn new(
        service: Service,
        operation: &'static str,
        method: Method,
        path: impl Into<String>,
    ) -> Self {
        Self {
            service,
            operation,
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            microversion: None,
        }
    }

    /// Adds a query parameter.
    pub fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }

    /// Uses `version` (a full `OpenStack-API-Version` value of the same service) for this call.
    pub fn microversion(mut self, version: &'static str) -> Self {
        self.microversion = Some(version);
        self
    }

    /// Sets the JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

/// A Keystone token with the catalog it came with.
struct Token {
    value: SecretString,
    /// When to issue a new token (local monotonic clock, see [`renew_after`]).
    renew_at: Instant,
    catalog: Vec<CatalogService>,
    project_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CatalogService {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Debug, Deserialize)]
struct CatalogEndpoint {
    interface: String,
    #[serde(default)]
    region_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    url: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    expires_at: Timestamp,
    #[serde(default)]
    issued_at: Option<Timestamp>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
    #[serde(default)]
    project: Option<TokenProject>,
}

#[derive(Deserialize)]
struct TokenProject {
    id: String,
}

struct Inner {
    http: reqwest::Client,
    cloud: CloudConfig,
    options: ClientOptions,
    token: RwLock<Option<Arc<Token>>>,
    renew: Mutex<()>,
    limiter: DefaultDirectRateLimiter,
    in_flight: Semaphore,
    metrics: Metrics,
    /// The identities this session serves and its last outcome per service
    /// (`capow_openstack_reachable`).
    reach: super::reachability::Reachability,
    lookups: LookupCache,
    /// Per service, when a `Retry-After` answer lets requests be sent again (see
    /// [`Session::honour_backoff`]).
    backoff: std::sync::Mutex<std::collections::HashMap<Service, Instant>>,
}

/// One cached lookup answer: taken (async) by the caller that fetches it, so concurrent callers
/// of the same URL wait for one request instead of sending their own.
type LookupSlot = Arc<Mutex<Option<(Instant, bytes::Bytes)>>>;

/// GET answers by `service path?query`, see the module docs.
#[derive(Default)]
struct LookupCache {
    slots: std::sync::Mutex<std::collections::HashMap<String, LookupSlot>>,
}

impl LookupCache {
    /// The slot of `key`; forgets expired slots nobody holds when it adds one.
    fn slot(&self, key: &str, ttl: Duration) -> LookupSlot {
        let mut slots = match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(s) = slots.get(key) {
            return s.clone();
        }
        slots.retain(|_, s| {
            s.try_lock().map_or(true, |v| {
                v.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl)
            })
        });
        let s = LookupSlot::default();
        slots.insert(key.to_owned(), s.clone());
        s
    }
}

/// An authenticated, rate-limited connection to one cloud as one identity. Cheap to clone;
/// clones share the token, the limits and the caches.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    pub(super) servers: Arc<super::compute::ServerCache>,
    /// Set on sessions from [`Session::with_lookup_cache`]: GETs use the lookup cache.
    lookup_ttl: Option<Duration>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("auth_url", &self.inner.cloud.auth_url)
            .field("region", &self.inner.cloud.region)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Builds a session; no request is sent until the first API call.
    ///
    /// # Errors
    /// [`Error::InvalidCaCert`] when `cacert` is not PEM, holds no certificate or a
    /// certificate that does not parse, and
    /// [`Error::InvalidCloudConfig`] when the HTTP client cannot be built.
    pub fn new(
        cloud: CloudConfig,
        cacert: Option<&[u8]>,
        options: ClientOptions,
        metrics: Metrics,
    ) -> Result<Self> {
        // reqwest (feature `rustls-no-provider`) panics without a process-wide rustls provider.
        // The binary installs ring at start; this covers library users and tests. An Err only
        // means a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("capow/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            // No redirects: reqwest drops `Authorization` and cookies on a cross-origin
            // redirect but not `X-Auth-Token`, and a 307/308 would resend a token request's
            // password (RFC 9110 §15.4.8). No Keystone v3, Nova, Neutron, Glance or Cinder call
            // capow makes is answered with a redirect; a 3xx becomes an error naming the
            // target instead.
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(!cloud.verify_tls);
        if let Some(pem) = cacert {
            for cert in ca_certificates(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            Error::InvalidCloudConfig(format!("failed to build the HTTP client: {e}"))
        })?;
        let limiter = RateLimiter::direct(
            Quota::per_second(options.requests_per_second).allow_burst(options.burst),
        );
        let in_flight = Semaphore::new(options.max_in_flight.max(1));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                cloud,
                options,
                token: RwLock::new(None),
                renew: Mutex::new(()),
                limiter,
                in_flight,
                metrics,
                reach: Default::default(),
                lookups: LookupCache::default(),
                backoff: std::sync::Mutex::default(),
            }),
            servers: Arc::new(super::compute::ServerCache::default()),
            lookup_ttl: None,
        })
    }

    /// This session, answering its GET requests from the per-identity lookup cache (see the
    /// module docs). Use it only for resolving names and IDs, never for a listing that decides
    /// whether to create something. The same session when the cache is disabled.
    pub fn with_lookup_cache(&self) -> Session {
        let ttl = self.inner.options.lookup_cache_ttl;
        Session {
            lookup_ttl: (!ttl.is_zero()).then_some(ttl),
            ..self.clone()
        }
    }

    /// Records whether `service` answered (`status`, `None` when no answer arrived) in the
    /// reachability series of this session's identities ([`super::reachability`]).
    fn reached(&self, service: &'static str, status: Option<u16>) {
        let ok = super::reachability::reachable(status);
        self.inner
            .reach
            .record(&self.inner.metrics.reachable, service, ok);
    }

    /// Makes this session record its reachability under `id`; true when `id` was new to it.
    pub(crate) fn serve_identity(&self, id: &super::IdentityLabel) -> bool {
        self.inner.reach.add(&self.inner.metrics.reachable, id)
    }

    /// Stops recording under `id` (it is served by another session now).
    pub(crate) fn release_identity(&self, id: &super::IdentityLabel) {
        self.inner.reach.release(id);
    }

    /// Removes the reachability series of the identities this session still serves.
    pub(crate) fn forget_identities(&self) {
        self.inner.reach.forget(&self.inner.metrics.reachable);
    }

    /// The cloud this session talks to.
    pub fn cloud(&self) -> &CloudConfig {
        &self.inner.cloud
    }

    /// Project the token is scoped to, issuing a token first if needed.
    ///
    /// # Errors
    /// As [`Session::authenticate`].
    pub async fn project_id(&self) -> Result<Option<String>> {
        Ok(self.token().await?.project_id.clone())
    }

    /// Issues a token now if none is cached or it is about to expire; a cheap no-op otherwise.
    /// Used to check credentials before any other call.
    ///
    /// # Errors
    /// [`Error::Api`] with 401 when Keystone refuses the credentials, [`Error::Transport`]
    /// when Keystone cannot be reached.
    pub async fn authenticate(&self) -> Result<()> {
        self.token().await.map(|_| ())
    }

    /// Sends `req` and decodes the JSON answer.
    ///
    /// # Errors
    /// [`Error::Api`] for HTTP error answers (after retries), [`Error::Transport`],
    /// [`Error::Decode`] and [`Error::EndpointNotFound`]; for a request that is not
    /// idempotent (POST), [`Error::OutcomeUnknown`] around any of these when the service may
    /// have carried it out.
    pub async fn send<T: DeserializeOwned>(&self, req: Request) -> Result<T> {
        let (service, operation) = (req.service.name(), req.operation);
        let idempotent = is_idempotent(&req.method);
        let bytes = self.send_raw(req).await?;
        serde_json::from_slice(&bytes).map_err(|source| {
            let e = Error::Decode {
                service,
                operation,
                source,
            };
            // A create that succeeded but whose answer (the new ID) cannot be read.
            if idempotent {
                e
            } else {
                Error::OutcomeUnknown {
                    source: Box::new(e),
                }
            }
        })
    }

    /// Sends `req` and ignores the body (DELETE, PUT of tags, 202/204 answers).
    ///
    /// # Errors
    /// As [`Session::send`], without [`Error::Decode`].
    pub async fn send_empty(&self, req: Request) -> Result<()> {
        self.send_raw(req).await.map(|_| ())
    }

    async fn send_raw(&self, req: Request) -> Result<bytes::Bytes> {
        let Some(ttl) = self.lookup_ttl.filter(|_| req.method == Method::GET) else {
            return self.send_uncached(req).await;
        };
        let key = format!("{} {}?{:?}", req.service.name(), req.path, req.query);
        let slot = self.inner.lookups.slot(&key, ttl);
        let mut held = slot.lock().await;
        if let Some((at, bytes)) = held.as_ref()
            && at.elapsed() < ttl
        {
            self.inner
                .metrics
                .lookup_cache_hit(req.service.name(), req.operation);
            return Ok(bytes.clone());
        }
        let bytes = self.send_uncached(req).await?;
        *held = Some((Instant::now(), bytes.clone()));
        Ok(bytes)
    }

    async fn send_uncached(&self, req: Request) -> Result<bytes::Bytes> {
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            let token = self.token().await?;
            let base = self.endpoint(&token, req.service)?;
            match self.attempt(&req, &token, &base).await {
                Ok(bytes) => return Ok(bytes),
                Err(Error::Api(e)) if e.status == StatusCode::UNAUTHORIZED && !reauthenticated => {
                    // The token was revoked or expired early: issue a new one once.
                    reauthenticated = true;
                    self.invalidate(&token).await;
                }
                Err(e) if attempt < self.inner.options.max_retries && self.retryable(&req, &e) => {
                    if let Some(after) = e.retry_after() {
                        self.back_off(req.service, after);
                    }
                    let delay = e
                        .retry_after()
                        .unwrap_or_else(|| Duration::from_millis(500 * 2u64.pow(attempt)))
                        .min(self.inner.options.max_retry_after);
                    tracing::debug!(service = req.service.name(), operation = req.operation, ?delay, error = %e, "Retrying OpenStack request");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(e) if !is_idempotent(&req.method) && may_have_taken_effect(&e) => {
                    return Err(Error::OutcomeUnknown {
                        source: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a back-off window for `service`: a 429 or 503 with `Retry-After` (RFC 9110
    /// §10.2.3) speaks for the service, not for one request, so no request of this session goes
    /// to that service before the window ends (capped at `max_retry_after`).
    fn back_off(&self, service: Service, after: Duration) {
        let until = Instant::now() + after.min(self.inner.options.max_retry_after);
        let mut map = match self.inner.backoff.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let entry = map.entry(service).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// Waits until no back-off window of `service` is open.
    async fn honour_backoff(&self, service: Service) {
        let until = {
            let map = match self.inner.backoff.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            map.get(&service).copied()
        };
        if let Some(until) = until
            && until > Instant::now()
        {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// Whether `e` may be retried for `req` (see the module docs for the rules and sources).
    fn retryable(&self, req: &Request, e: &Error) -> bool {
        let idempotent = is_idempotent(&req.method);
        match e {
            // Rate limited: the request was refused, not processed (RFC 6585 §4).
            Error::Api(a) if a.status == StatusCode::TOO_MANY_REQUESTS => true,
            // Unavailable: a proxy or the service may still have processed part of it.
            Error::Api(a) => idempotent && a.status == StatusCode::SERVICE_UNAVAILABLE,
            // No connection: nothing was sent. Anything later: repeat only what is idempotent.
            Error::Transport { source, .. } => idempotent || source.is_connect(),
            _ => false,
        }
    }

    async fn attempt(&self, req: &Request, token: &Token, base: &str) -> Result<bytes::Bytes> {
        self.honour_backoff(req.service).await;
        let service = req.service.name();
        let operation = req.operation;
        let url = format!("{base}{}", req.path);
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(token.value.expose()) {
            headers.insert("X-Auth-Token", v);
        }
        if let Some((default, legacy)) = req.service.microversion() {
            let header = req.microversion.unwrap_or(default);
            headers.insert("OpenStack-API-Version", HeaderValue::from_static(header));
            if req.service == Service::Compute {
                headers.insert(
                    "X-OpenStack-Nova-API-Version",
                    HeaderValue::from_static(legacy),
                );
            }
        }
        let mut builder = self
            .inner
            .http
            .request(req.method.clone(), &url)
            .headers(headers);
        if !req.query.is_empty() {
            builder = builder.query(&req.query);
        }
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }

        self.inner.limiter.until_ready().await;
        let _permit = self.inner.in_flight.acquire().await;
        let started = Instant::now();
        let result = builder.send().await;
        let elapsed = started.elapsed();
        let response = match result {
            Ok(r) => r,
            Err(source) => {
                self.inner
                    .metrics
                    .observe(service, operation, "error", elapsed);
                self.reached(service, None);
                return Err(transport(service, operation, &url, source));
            }
        };
        let status = response.status();
        self.inner
            .metrics
            .observe(service, operation, status.as_str(), elapsed);
        self.reached(service, Some(status.as_u16()));
        let request_id = request_id(response.headers());
        let retry_after = retry_after(response.headers());
        if status.is_success() {
            let limit = self.inner.options.max_response_bytes;
            let body = read_body(response, limit)
                .await
                .map_err(|e| e.into_error(service, operation, &url, limit))?;
            tracing::trace!(service, operation, %status, ?elapsed, "OpenStack request");
            return Ok(body);
        }
        Err(Error::Api(ApiError {
            service,
            operation,
            status,
            request_id,
            message: error_message(response).await,
            retry_after,
        }))
    }

    /// The versioned endpoint of `service` for this session's interface and region.
    fn endpoint(&self, token: &Token, service: Service) -> Result<String> {
        let cloud = &self.inner.cloud;
        let found = service.catalog_types().iter().find_map(|t| {
            token
                .catalog
                .iter()
                .filter(|s| s.type_ == *t)
                .find_map(|s| {
                    s.endpoints.iter().find(|e| {
                        e.interface == cloud.interface
                            && cloud.region.as_ref().is_none_or(|r| {
                                e.region_id.as_ref() == Some(r) || e.region.as_ref() == Some(r)
                            })
                    })
                })
        });
        let endpoint = found.ok_or_else(|| Error::EndpointNotFound {
            service: service.name(),
            interface: cloud.interface.clone(),
            region: cloud.region.clone(),
        })?;
        let url = endpoint.url.trim_end_matches('/');
        let suffix = service.version_suffix();
        Ok(if suffix.is_empty() || url.ends_with(suffix) {
            url.to_owned()
        } else {
            format!("{url}{suffix}")
        })
    }

    async fn token(&self) -> Result<Arc<Token>> {
        if let Some(t) = self.valid_token().await {
            return Ok(t);
        }
        let _renewing = self.inner.renew.lock().await;
        // Another task may have renewed while this one waited for the lock.
        if let Some(t) = self.valid_token().await {
            return Ok(t);
        }
        let token = Arc::new(self.issue_token().await?);
        *self.inner.token.write().await = Some(token.clone());
        Ok(token)
    }

    async fn valid_token(&self) -> Option<Arc<Token>> {
        let guard = self.inner.token.read().await;
        let token = guard.as_ref()?;
        (Instant::now() < token.renew_at).then(|| token.clone())
    }

    async fn invalidate(&self, used: &Arc<Token>) {
        let mut guard = self.inner.token.write().await;
        if guard.as_ref().is_some_and(|t| Arc::ptr_eq(t, used)) {
            *guard = None;
        }
    }

    async fn issue_token(&self) -> Result<Token> {
        const SERVICE: &str = "identity";
        const OPERATION: &str = "token_issue";
        let cloud = &self.inner.cloud;
        let body = token_request_body(cloud);
        let url = format!("{}/auth/tokens", cloud.auth_url);
        // Keystone is called through the same limits as every other service.
        self.inner.limiter.until_ready().await;
        let _permit = self.inner.in_flight.acquire().await;
        let started = Instant::now();
        let result = self.inner.http.post(&url).json(&body).send().await;
        let elapsed = started.elapsed();
        let response = match result {
            Ok(r) => r,
            Err(source) => {
                self.inner
                    .metrics
                    .observe(SERVICE, OPERATION, "error", elapsed);
                self.reached(SERVICE, None);
                return Err(transport(SERVICE, OPERATION, &url, source));
            }
        };
        let status = response.status();
        self.inner
            .metrics
            .observe(SERVICE, OPERATION, status.as_str(), elapsed);
        self.reached(SERVICE, Some(status.as_u16()));
        let request_id = request_id(response.headers());
        let retry_after = retry_after(response.headers());
        let subject = response
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(SecretString::new);
        if !status.is_success() {
            return Err(Error::Api(ApiError {
                service: SERVICE,
                operation: OPERATION,
                status,
                request_id,
                message: error_message(response).await,
                retry_after,
            }));
        }
        let limit = self.inner.options.max_response_bytes;
        let bytes = read_body(response, limit)
            .await
            .map_err(|e| e.into_error(SERVICE, OPERATION, &url, limit))?;
        let value = subject.ok_or_else(|| {
            Error::InvalidCloudConfig("Keystone answered without an X-Subject-Token header".into())
        })?;
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
                service: SERVICE,
                operation: OPERATION,
                source,
            })?;
        let token = parsed.token;
        // The lifetime by Keystone's clock, counted on the local monotonic clock from when the
        // request was sent, so clock skew between capow and Keystone does not matter.
        let issued_at = token.issued_at.unwrap_or_else(Timestamp::now);
        let lifetime = Duration::try_from(token.expires_at.duration_since(issued_at))
            .unwrap_or(Duration::ZERO);
        let renew_in = renew_after(lifetime, self.inner.options.renew_before);
        tracing::debug!(auth_url = %cloud.auth_url, expires_at = %token.expires_at, renew_in_seconds = renew_in.as_secs(), "Issued Keystone token");
        Ok(Token {
            value,
            renew_at: started + renew_in,
            catalog: token.catalog,
            project_id: token.project.map(|p| p.id),
        })
    }
}

/// How long after it was issued a token of `lifetime` is renewed: `renew_before` ahead of its
/// expiry, but at half its lifetime when that is earlier. Keystone's default token lifetime is
/// one hour (`[token] expiration = 3600`, Keystone configuration reference), so the default
/// `renew_before` of 600 s renews at 50 min; a cloud configured for 60 s tokens gets them
/// renewed every 30 s rather than before every call.
pub fn renew_after(lifetime: Duration, renew_before: Duration) -> Duration {
    lifetime.saturating_sub(renew_before.min(lifetime / 2))
}

fn name_or_id_json(v: &NameOrId, domain: Option<&NameOrId>) -> Value {
    let mut obj = match v {
        NameOrId::Id(id) => json!({ "id": id }),
        NameOrId::Name(name) => json!({ "name": name }),
    };
    if let (NameOrId::Name(_), Some(d)) = (v, domain) {
        obj["domain"] = name_or_id_json(d, None);
    }
    obj
}

/// The body of `POST /v3/auth/tokens` for `cloud` (Keystone v3 API reference, "Password
/// authentication with scoped authorization" and "Authenticating with an Application
/// Credential").
fn token_request_body(cloud: &CloudConfig) -> Value {
    let identity = match &cloud.auth {
        AuthMethod::Password {
            user,
            user_domain,
            password,
        } => {
            let mut user = name_or_id_json(user, user_domain.as_ref());
            user["password"] = json!(password.expose());
            json!({ "methods": ["password"], "password": { "user": user } })
        }
        AuthMethod::ApplicationCredential {
            credential,
            user,
            user_domain,
            secret,
        } => {
            let mut ac = match credential {
                NameOrId::Id(id) => json!({ "id": id }),
                NameOrId::Name(name) => json!({ "name": name }),
            };
            if let (NameOrId::Name(_), Some(u)) = (credential, user) {
                ac["user"] = name_or_id_json(u, user_domain.as_ref());
            }
            ac["secret"] = json!(secret.expose());
            json!({ "methods": ["application_credential"], "application_credential": ac })
        }
    };
    let mut auth = json!({ "identity": identity });
    if let Some(scope) = &cloud.scope {
        auth["scope"] =
            json!({ "project": name_or_id_json(&scope.project, scope.domain.as_ref()) });
    }
    json!({ "auth": auth })
}

/// Most of an error answer's body read for its message, in bytes.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Why [`read_body`] stopped.
enum BodyError {
    /// The body is larger than the limit.
    TooLarge,
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

impl BodyError {
    fn into_error(
        self,
        service: &'static str,
        operation: &'static str,
        url: &str,
        limit: usize,
    ) -> Error {
        match self {
            BodyError::TooLarge => Error::ResponseTooLarge {
                service,
                operation,
                limit,
            },
            BodyError::Transport(source) => transport(service, operation, url, source),
        }
    }
}

/// The body of `response`, read chunk by chunk and given up as soon as it would exceed
/// `limit` bytes (at once when `Content-Length` already says so), so an endless or huge
/// answer costs at most `limit` bytes of memory plus one chunk.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> std::result::Result<bytes::Bytes, BodyError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    // Trust a declared length for the first allocation only up to 64 KiB: a server could
    // announce 16 MiB and then send nothing.
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0).min(64 * 1024));
    let mut body = bytes::BytesMut::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The message of an error answer: read up to [`ERROR_BODY_LIMIT`] and extracted with
/// [`message_from_body`]; a body that is larger or cannot be read is described instead. For a
/// redirect (which the session does not follow), where it leads.
async fn error_message(response: reqwest::Response) -> String {
    if response.status().is_redirection() {
        let target = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .map_or_else(|| "elsewhere".to_owned(), |u| redacted_url(u.as_str()));
        return format!(
            "the service redirects to {target}; capow follows no redirects (they could carry \
             the token elsewhere), so give that URL as auth_url or in the service catalog"
        );
    }
    match read_body(response, ERROR_BODY_LIMIT).await {
        Ok(body) => message_from_body(&String::from_utf8_lossy(&body)),
        Err(BodyError::TooLarge) => format!(
            "(the error answer is larger than {} and was not read)",
            bytes_in_words(&ERROR_BODY_LIMIT)
        ),
        Err(BodyError::Transport(e)) => format!(
            "(the error answer could not be read: {})",
            transport_cause(&e)
        ),
    }
}

/// True for the methods RFC 9110 §9.2.2 defines as idempotent that capow uses: GET, HEAD,
/// PUT and DELETE. Everything else (POST) is sent once unless it surely was not processed.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    )
}

/// True when a failed request may still have been carried out by the service: a 5xx answer,
/// a transport failure after the connection was made (timeout, reset, unreadable answer), or
/// a success answer too large to read.
fn may_have_taken_effect(e: &Error) -> bool {
    match e {
        Error::Api(a) => a.status.is_server_error(),
        Error::Transport { source, .. } => !source.is_connect(),
        Error::ResponseTooLarge { .. } => true,
        _ => false,
    }
}

/// An [`Error::Transport`] for a request to `url`; the URL is kept without its query (and
/// removed from reqwest's error, whose `Display` would show it with the query).
fn transport(
    service: &'static str,
    operation: &'static str,
    url: &str,
    source: reqwest::Error,
) -> Error {
    Error::Transport {
        service,
        operation,
        url: redacted_url(url),
        source: source.without_url(),
    }
}

/// The certificates of an identity's `cacert` (clouds.yaml `cacert`: a PEM bundle of one or
/// more `-----BEGIN CERTIFICATE-----` blocks, RFC 7468 §5), each checked the way rustls will
/// use it as a trust anchor, so a broken bundle is reported here in words instead of as
/// reqwest's "builder error" later.
///
/// # Errors
/// [`Error::InvalidCaCert`] naming the problem: empty, binary DER instead of PEM, PEM without
/// a certificate block (e.g. only a private key), a malformed PEM block, or a certificate
/// block whose content is not an X.509 certificate.
pub(crate) fn ca_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::{Error as PemError, PemObject};

    let invalid = |m: String| Error::InvalidCaCert(m);
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let der = item.map_err(|e| {
            invalid(match e {
                PemError::MissingSectionEnd { .. } => {
                    "it is not valid PEM: a block has no -----END----- line".to_owned()
                }
                PemError::IllegalSectionStart { .. } => {
                    "it is not valid PEM: a -----BEGIN----- line is malformed".to_owned()
                }
                PemError::Base64Decode(_) => {
                    "it is not valid PEM: a block is not valid base64".to_owned()
                }
                other => format!("it is not valid PEM: {other}"),
            })
        })?;
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|_| {
                invalid(format!(
                    "certificate {} in it is not a valid X.509 certificate",
                    i + 1
                ))
            })?;
        certs.push(
            reqwest::Certificate::from_der(&der)
                .map_err(|_| invalid(format!("certificate {} in it is not usable", i + 1)))?,
        );
    }
    if certs.is_empty() {
        let text = String::from_utf8_lossy(pem);
        return Err(invalid(if text.trim().is_empty() {
            "it is empty".to_owned()
        } else if pem.first() == Some(&0x30) {
            "it looks like a binary (DER) certificate; capow needs PEM, e.g. from `openssl x509 -inform der -outform pem`".to_owned()
        } else if text.contains("-----BEGIN ") {
            "it holds no -----BEGIN CERTIFICATE----- block (only other PEM blocks, such as a key)"
                .to_owned()
        } else {
            "it is not PEM: it holds no -----BEGIN CERTIFICATE----- block".to_owned()
        }));
    }
    Ok(certs)
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    ["x-openstack-request-id", "x-compute-request-id"]
        .iter()
        .find_map(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = k8s_openapi::jiff::fmt::rfc2822::parse(value)
        .ok()?
        .timestamp();
    let delta = at.duration_since(Timestamp::now());
    Some(Duration::from_secs(delta.as_secs().max(0).unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openstack::clouds::CloudConfig;

    #[test]
    fn password_token_body_scopes_to_the_project() {
        let yaml = "clouds: {c: {auth: {auth_url: http://k/v3, username: u, password: pw, project_name: p, user_domain_name: D}}}";
        let cloud = CloudConfig::from_clouds_yaml(yaml, "c", None).unwrap();
        assert_eq!(
            token_request_body(&cloud),
            json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {"name": "u", "domain": {"name": "D"}, "password": "pw"}}},
                "scope": {"project": {"name": "p", "domain": {"id": "default"}}}
            }})
        );
    }

    #[test]
    fn application_credential_by_name_names_its_user() {
        let yaml = "clouds: {c: {auth_type: v3applicationcredential, auth: {auth_url: http://k/v3, application_credential_name: ac, application_credential_secret: s, username: u}}}";
        let cloud = CloudConfig::from_clouds_yaml(yaml, "c", None).unwrap();
        assert_eq!(
            token_request_body(&cloud),
            json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
                "name": "ac", "user": {"name": "u", "domain": {"id": "default"}}, "secret": "s"
            }}}})
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&h), None);
    }

    fn token_with(catalog: Value) -> Token {
        Token {
            value: SecretString::new("t"),
            renew_at: Instant::now(),
            catalog: serde_json::from_value(catalog).unwrap(),
            project_id: None,
        }
    }

    #[test]
    fn endpoints_by_type_interface_region_and_version() {
        let yaml = "clouds: {c: {region_name: R2, interface: internal, auth: {auth_url: http://k/v3, user_id: u, password: p, project_id: p}}}";
        let cloud = CloudConfig::from_clouds_yaml(yaml, "c", None).unwrap();
        let session =
            Session::new(cloud, None, ClientOptions::default(), Metrics::default()).unwrap();
        let token = token_with(json!([
            {"type": "network", "endpoints": [
                {"interface": "public", "region_id": "R2", "url": "http://pub:9696"},
                {"interface": "internal", "region_id": "R1", "url": "http://r1:9696"},
                {"interface": "internal", "region_id": "R2", "url": "http://r2:9696/"}
            ]},
            {"type": "volumev3", "endpoints": [{"interface": "internal", "region_id": "R2", "url": "http://c:8776/v3/p1"}]},
            {"type": "image", "endpoints": [{"interface": "internal", "region_id": "R2", "url": "http://g:9292/v2"}]}
        ]));
        assert_eq!(
            session.endpoint(&token, Service::Network).unwrap(),
            "http://r2:9696/v2.0"
        );
        assert_eq!(
            session.endpoint(&token, Service::BlockStorage).unwrap(),
            "http://c:8776/v3/p1"
        );
        assert_eq!(
            session.endpoint(&token, Service::Image).unwrap(),
            "http://g:9292/v2"
        );
        let err = session
            .endpoint(&token, Service::Compute)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the service catalog has no compute endpoint with interface \"internal\" in region \"R2\""
        );
    }

    /// A fake Keystone + Neutron on 127.0.0.1 that counts network listings and answers each
    /// after 50 ms (so concurrent callers overlap).
    async fn fake_cloud() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::routing::{get, post};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let catalog = json!({"token": {"expires_at": "2099-01-01T00:00:00Z", "project": {"id": "p"},
            "catalog": [{"type": "network", "endpoints": [{"interface": "public", "region_id": "R", "url": base}]}]}});
        let counted = hits.clone();
        let app = axum::Router::new()
            .route(
                "/v3/auth/tokens",
                post(move || {
                    let body = catalog.to_string();
                    async move { ([("X-Subject-Token", "tok")], body) }
                }),
            )
            .route(
                "/v2.0/networks",
                get(move || {
                    let counted = counted.clone();
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        r#"{"networks": []}"#
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, hits)
    }

    #[tokio::test]
    async fn lookups_share_one_request_per_ttl_and_plain_sessions_never_cache() {
        use std::sync::atomic::Ordering;
        let (base, hits) = fake_cloud().await;
        let yaml = format!(
            "clouds: {{c: {{region_name: R, auth: {{auth_url: {base}/v3, user_id: u, password: p, project_id: p}}}}}}"
        );
        let cloud = CloudConfig::from_clouds_yaml(&yaml, "c", None).unwrap();
        let options = ClientOptions {
            lookup_cache_ttl: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let session = Session::new(cloud, None, options, Metrics::default()).unwrap();
        let filter = crate::openstack::network::ListFilter::attribute("name", "net1");

        // Eight machines resolving the same network at once: one request.
        let cached = session.with_lookup_cache();
        let calls = (0..8).map(|_| {
            let (cached, filter) = (cached.clone(), filter.clone());
            async move { cached.network().list_networks(&filter).await }
        });
        for r in futures::future::join_all(calls).await {
            assert!(r.unwrap().is_empty());
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Another filter is another lookup.
        let other = crate::openstack::network::ListFilter::attribute("name", "net2");
        cached.network().list_networks(&other).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // The plain session (listings that decide about creating) always asks.
        session.network().list_networks(&filter).await.unwrap();
        session.network().list_networks(&filter).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        // After the TTL the lookup asks again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        cached.network().list_networks(&filter).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 5);
    }

    /// Serves `app` on 127.0.0.1 and returns its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// A cloud whose Keystone is at `auth_url`.
    fn cloud_at(auth_url: &str) -> CloudConfig {
        let yaml = format!(
            "clouds: {{c: {{region_name: R, auth: {{auth_url: '{auth_url}', user_id: u, password: p, project_id: p}}}}}}"
        );
        CloudConfig::from_clouds_yaml(&yaml, "c", None).unwrap()
    }

    /// A port on 127.0.0.1 that nothing listens on (bound, then released).
    async fn closed_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn unreachable_auth_url_names_the_url_and_the_cause() {
        let port = closed_port().await;
        let session = Session::new(
            cloud_at(&format!("http://127.0.0.1:{port}/v3")),
            None,
            ClientOptions::default(),
            Metrics::default(),
        )
        .unwrap();
        let err = session.authenticate().await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach Keystone at http://127.0.0.1:{port}/v3/auth/tokens: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn unreachable_service_names_its_url_without_the_query() {
        let port = closed_port().await;
        let catalog = json!({"token": {"expires_at": "2099-01-01T00:00:00Z", "project": {"id": "p"},
            "catalog": [{"type": "network", "endpoints": [{"interface": "public", "region_id": "R", "url": format!("http://127.0.0.1:{port}")}]}]}});
        let app = axum::Router::new().route(
            "/v3/auth/tokens",
            axum::routing::post(move || {
                let body = catalog.to_string();
                async move { ([("X-Subject-Token", "tok")], body) }
            }),
        );
        let base = serve(app).await;
        let options = ClientOptions {
            max_retries: 0,
            ..ClientOptions::default()
        };
        let session = Session::new(
            cloud_at(&format!("{base}/v3")),
            None,
            options,
            Metrics::default(),
        )
        .unwrap();
        let filter = crate::openstack::network::ListFilter::attribute("name", "secret-ish");
        let err = session
            .network()
            .list_networks(&filter)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach Neutron at http://127.0.0.1:{port}/v2.0/networks: connection refused"
            )
        );
    }

    #[tokio::test]
    async fn reachability_follows_the_last_answer_of_each_service_per_identity() {
        use crate::openstack::reachability::IdentityLabel;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let network = {
            let calls = calls.clone();
            axum::Router::new().route(
                "/v2.0/networks",
                axum::routing::get(move || {
                    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        // A 503 first, then a 404: the service answers again.
                        if n == 0 {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            axum::http::StatusCode::NOT_FOUND
                        }
                    }
                }),
            )
        };
        let network = serve(network).await;
        let catalog = json!({"token": {"expires_at": "2099-01-01T00:00:00Z", "project": {"id": "p"},
            "catalog": [{"type": "network", "endpoints": [{"interface": "public", "region_id": "R", "url": network}]}]}});
        let keystone = axum::Router::new().route(
            "/v3/auth/tokens",
            axum::routing::post(move || {
                let body = catalog.to_string();
                async move { ([("X-Subject-Token", "tok")], body) }
            }),
        );
        let keystone = serve(keystone).await;
        let metrics = Metrics::default();
        let clouds = crate::openstack::Clouds::new(
            ClientOptions {
                max_retries: 0,
                ..ClientOptions::default()
            },
            metrics.clone(),
        );
        let id = IdentityLabel {
            identity: "ns/cloud-config".into(),
            cloud: "c".into(),
            region: String::new(),
        };
        let value = |service: &str| {
            let mut registry =
                prometheus_client::registry::Registry::with_prefix("capow_openstack");
            metrics.register(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            let series = format!(
                "capow_openstack_reachable{{identity=\"ns/cloud-config\",cloud=\"c\",region=\"\",service=\"{service}\"}}"
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.trim().to_owned())
        };
        let session = clouds
            .session(cloud_at(&format!("{keystone}/v3")), None, Some(&id))
            .unwrap();
        assert_eq!(
            value("identity"),
            None,
            "no series before the first request"
        );
        let filter = crate::openstack::network::ListFilter::attribute("name", "n");
        session.network().list_networks(&filter).await.unwrap_err();
        assert_eq!(value("identity").as_deref(), Some("1"));
        assert_eq!(value("network").as_deref(), Some("0"), "503");
        session.network().list_networks(&filter).await.unwrap_err();
        assert_eq!(value("network").as_deref(), Some("1"), "404 is an answer");

        // No answer at all: connection refused.
        let port = closed_port().await;
        let other = IdentityLabel {
            identity: "ns/other".into(),
            ..id.clone()
        };
        let session = clouds
            .session(
                cloud_at(&format!("http://127.0.0.1:{port}/v3")),
                None,
                Some(&other),
            )
            .unwrap();
        session.authenticate().await.unwrap_err();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.lines().any(|l| l
                == "reachable{identity=\"ns/other\",cloud=\"c\",region=\"\",service=\"identity\"} 0"),
            "{text}"
        );
    }

    fn session_with_cacert(pem: &[u8]) -> Result<Session> {
        Session::new(
            cloud_at("https://keystone.example/v3"),
            Some(pem),
            ClientOptions::default(),
            Metrics::default(),
        )
    }

    #[test]
    fn unusable_cacerts_say_why() {
        let err = |pem: &[u8]| session_with_cacert(pem).unwrap_err().to_string();
        assert_eq!(
            err(b"not a certificate"),
            "the identity's cacert is unusable: it is not PEM: it holds no -----BEGIN CERTIFICATE----- block"
        );
        assert_eq!(
            err(b"-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n"),
            "the identity's cacert is unusable: it is not valid PEM: a block is not valid base64"
        );
        // Valid base64, but not a certificate inside.
        assert_eq!(
            err(b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"),
            "the identity's cacert is unusable: certificate 1 in it is not a valid X.509 certificate"
        );
        assert!(err(b"-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n")
            .ends_with("it holds no -----BEGIN CERTIFICATE----- block (only other PEM blocks, such as a key)"));
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
        assert!(err(ca.cert.der()).contains("binary (DER) certificate; capow needs PEM"));
        assert!(err(b"  \n").ends_with("it is empty"));
        // A good bundle is accepted.
        session_with_cacert(ca.cert.pem().as_bytes()).unwrap();
    }

    /// A TLS server on 127.0.0.1 presenting a self-signed certificate for `name`; it only
    /// completes handshakes. Returns its port and its certificate (PEM).
    async fn tls_server(name: &str) -> (u16, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let pem = server.cert.pem();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(server.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![server.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move { acceptor.accept(tcp).await });
            }
        });
        (port, pem)
    }

    #[tokio::test]
    async fn server_certificate_not_signed_by_the_cacert_is_named() {
        let (port, _) = tls_server("127.0.0.1").await;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "another CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let other_ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let session = Session::new(
            cloud_at(&format!("https://127.0.0.1:{port}/v3")),
            Some(other_ca.pem().as_bytes()),
            ClientOptions::default(),
            Metrics::default(),
        )
        .unwrap();
        let err = session.authenticate().await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach Keystone at https://127.0.0.1:{port}/v3/auth/tokens: TLS: the server's certificate is not signed by a trusted CA (the identity's cacert, or the system's CAs without one)"
            )
        );
    }

    #[tokio::test]
    async fn server_certificate_for_another_name_is_named() {
        let (port, pem) = tls_server("keystone.example").await;
        let session = Session::new(
            cloud_at(&format!("https://127.0.0.1:{port}/v3")),
            Some(pem.as_bytes()),
            ClientOptions::default(),
            Metrics::default(),
        )
        .unwrap();
        let err = session.authenticate().await.unwrap_err().to_string();
        assert!(
            err.ends_with(
                "TLS: the server's certificate is not valid for this host name (it is valid for keystone.example)"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn https_url_on_a_plain_http_server_is_named() {
        let app = axum::Router::new();
        let base = serve(app).await.replace("http://", "https://");
        let session = Session::new(
            cloud_at(&format!("{base}/v3")),
            None,
            ClientOptions::default(),
            Metrics::default(),
        )
        .unwrap();
        let err = session.authenticate().await.unwrap_err().to_string();
        assert!(
            err.ends_with(
                "the server does not speak TLS at this address (an http:// URL given as https://?)"
            ),
            "{err}"
        );
    }

    /// Serves `routes` plus a Keystone whose catalog points Neutron at the same server, on
    /// 127.0.0.1, and returns a session for it.
    async fn fake_neutron(routes: axum::Router, options: ClientOptions) -> Session {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let catalog = json!({"token": {"expires_at": "2099-01-01T00:00:00Z", "project": {"id": "p"},
            "catalog": [{"type": "network", "endpoints": [{"interface": "public", "region_id": "R", "url": base}]}]}});
        let app = routes.route(
            "/v3/auth/tokens",
            axum::routing::post(move || {
                let body = catalog.to_string();
                async move { ([("X-Subject-Token", "tok")], body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Session::new(
            cloud_at(&format!("{base}/v3")),
            None,
            options,
            Metrics::default(),
        )
        .unwrap()
    }

    /// A handler answering `answers` in turn (the last one from then on) and counting calls.
    fn scripted(
        answers: Vec<(u16, Option<&'static str>, &'static str)>,
        calls: Arc<std::sync::Mutex<Vec<Instant>>>,
    ) -> axum::routing::MethodRouter {
        let answers = Arc::new(answers);
        let handler = move || {
            let (answers, calls) = (answers.clone(), calls.clone());
            async move {
                let n = {
                    let mut calls = calls.lock().unwrap();
                    calls.push(Instant::now());
                    calls.len() - 1
                };
                let (status, retry_after, body) = answers[n.min(answers.len() - 1)];
                let mut response = axum::response::IntoResponse::into_response(body);
                *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                if let Some(after) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", after.parse().unwrap());
                }
                response
            }
        };
        axum::routing::any(handler)
    }

    fn a_port() -> crate::openstack::network::CreatePort {
        crate::openstack::network::CreatePort {
            name: "m-0".into(),
            network_id: "n".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn post_answered_503_is_sent_once_and_its_outcome_is_unknown() {
        let calls = Arc::default();
        let routes = axum::Router::new().route(
            "/v2.0/ports",
            scripted(vec![(503, Some("0"), "busy")], Arc::clone(&calls)),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let err = session.network().create_port(&a_port()).await.unwrap_err();
        assert_eq!(calls.lock().unwrap().len(), 1);
        assert!(err.is_outcome_unknown(), "{err}");
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            err.to_string(),
            "network port_create failed with HTTP 503 Service Unavailable: busy (the request may have taken effect all the same)"
        );
    }

    #[tokio::test]
    async fn post_that_times_out_is_sent_once_and_its_outcome_is_unknown() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let routes = axum::Router::new().route(
            "/v2.0/ports",
            axum::routing::post(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "{}"
                }
            }),
        );
        let options = ClientOptions {
            request_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let session = fake_neutron(routes, options).await;
        let err = session.network().create_port(&a_port()).await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
        assert!(err.to_string().contains("/v2.0/ports: timed out"), "{err}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn post_whose_success_answer_is_unreadable_has_an_unknown_outcome() {
        let calls = Arc::default();
        let routes = axum::Router::new().route(
            "/v2.0/ports",
            scripted(vec![(201, None, "{\"port\": ")], Arc::clone(&calls)),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let err = session.network().create_port(&a_port()).await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
        // The same answer to a GET is a plain decode error.
        let routes = axum::Router::new().route(
            "/v2.0/networks",
            scripted(vec![(200, None, "{\"networks\": ")], Arc::default()),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let filter = crate::openstack::network::ListFilter::default();
        let err = session.network().list_networks(&filter).await.unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
    }

    #[tokio::test]
    async fn post_whose_connection_is_refused_is_not_of_unknown_outcome() {
        let port = closed_port().await;
        let catalog = json!({"token": {"expires_at": "2099-01-01T00:00:00Z", "project": {"id": "p"},
            "catalog": [{"type": "network", "endpoints": [{"interface": "public", "region_id": "R", "url": format!("http://127.0.0.1:{port}")}]}]}});
        let app = axum::Router::new().route(
            "/v3/auth/tokens",
            axum::routing::post(move || {
                let body = catalog.to_string();
                async move { ([("X-Subject-Token", "tok")], body) }
            }),
        );
        let base = serve(app).await;
        let options = ClientOptions {
            max_retries: 1,
            ..ClientOptions::default()
        };
        let session = Session::new(
            cloud_at(&format!("{base}/v3")),
            None,
            options,
            Metrics::default(),
        )
        .unwrap();
        let err = session.network().create_port(&a_port()).await.unwrap_err();
        assert!(!err.is_outcome_unknown(), "{err}");
        assert!(err.to_string().ends_with("connection refused"), "{err}");
    }

    #[tokio::test]
    async fn get_answered_503_is_retried_after_its_retry_after() {
        let calls: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let routes = axum::Router::new().route(
            "/v2.0/networks",
            scripted(
                vec![(503, Some("1"), "busy"), (200, None, r#"{"networks": []}"#)],
                Arc::clone(&calls),
            ),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let filter = crate::openstack::network::ListFilter::default();
        assert!(
            session
                .network()
                .list_networks(&filter)
                .await
                .unwrap()
                .is_empty()
        );
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[1] - calls[0] >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn retry_after_holds_back_every_request_to_the_service() {
        let calls: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let routes = axum::Router::new()
            .route(
                "/v2.0/networks",
                scripted(
                    vec![
                        (429, Some("1"), "slow down"),
                        (200, None, r#"{"networks": []}"#),
                    ],
                    Arc::clone(&calls),
                ),
            )
            .route(
                "/v2.0/ports",
                scripted(vec![(200, None, r#"{"ports": []}"#)], Arc::clone(&calls)),
            );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let filter = crate::openstack::network::ListFilter::default();
        let net = session.network();
        let first = net.list_networks(&filter);
        let other = async {
            // Sent after the 429 arrived, while its window is open.
            tokio::time::sleep(Duration::from_millis(300)).await;
            net.list_ports(&filter).await
        };
        let (a, b) = tokio::join!(first, other);
        a.unwrap();
        b.unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 3, "429, the ports listing, the retry");
        assert!(
            calls[1] - calls[0] >= Duration::from_secs(1),
            "the ports listing waited for the window the 429 opened"
        );
    }

    #[tokio::test]
    async fn post_answered_429_is_retried_after_its_retry_after() {
        let calls: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let routes = axum::Router::new().route(
            "/v2.0/ports",
            scripted(
                vec![
                    (429, Some("1"), "slow down"),
                    (201, None, r#"{"port": {"id": "p1"}}"#),
                ],
                Arc::clone(&calls),
            ),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let port = session.network().create_port(&a_port()).await.unwrap();
        assert_eq!(port.id, "p1");
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[1] - calls[0] >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn put_answered_503_is_retried() {
        let calls: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
        let routes = axum::Router::new().route(
            "/v2.0/ports/p1/tags",
            scripted(
                vec![(503, Some("0"), "busy"), (200, None, "{}")],
                Arc::clone(&calls),
            ),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        session
            .network()
            .set_port_tags("p1", &["capow".to_owned()])
            .await
            .unwrap();
        assert_eq!(calls.lock().unwrap().len(), 2);
    }

    /// A body of `total` bytes sent in 64 KiB chunks without a `Content-Length`, counting the
    /// bytes the server has handed to the connection in `sent`.
    fn endless_body(total: usize, sent: Arc<std::sync::atomic::AtomicUsize>) -> axum::body::Body {
        use futures::StreamExt;
        const CHUNK: usize = 64 * 1024;
        let chunks = futures::stream::iter(0..total / CHUNK).map(move |_| {
            sent.fetch_add(CHUNK, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; CHUNK]))
        });
        axum::body::Body::from_stream(chunks)
    }

    #[tokio::test]
    async fn bodies_larger_than_the_limit_fail_without_being_read() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const MIB: usize = 1024 * 1024;
        let sent = Arc::new(AtomicUsize::new(0));
        let streamed = sent.clone();
        let routes = axum::Router::new()
            .route(
                "/v2.0/networks",
                axum::routing::get(move || {
                    let sent = streamed.clone();
                    async move { endless_body(128 * MIB, sent) }
                }),
            )
            .route(
                "/v2.0/subnets",
                axum::routing::get(|| async { vec![b' '; 2 * MIB] }),
            )
            .route(
                "/v2.0/routers",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        endless_body(128 * MIB, Arc::default()),
                    )
                }),
            );
        let options = ClientOptions {
            max_response_bytes: MIB,
            ..ClientOptions::default()
        };
        let session = fake_neutron(routes, options).await;
        let filter = crate::openstack::network::ListFilter::default();

        // Streamed without Content-Length: given up at the limit.
        let err = session.network().list_networks(&filter).await.unwrap_err();
        assert!(
            matches!(err, Error::ResponseTooLarge { limit: MIB, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the network network_list response is larger than 1 MiB, the most capow reads"
        );
        // The server got rid of the limit plus what the loopback socket buffers hold, far
        // less than the body.
        assert!(
            sent.load(Ordering::SeqCst) < 32 * MIB,
            "{}",
            sent.load(Ordering::SeqCst)
        );

        // With a Content-Length above the limit: refused before reading.
        let err = session.network().list_subnets(&filter).await.unwrap_err();
        assert!(matches!(err, Error::ResponseTooLarge { .. }), "{err}");

        // An error answer is read up to 64 KiB for its message.
        let err = session.network().list_routers(&filter).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(
            err.to_string()
                .ends_with("(the error answer is larger than 64 KiB and was not read)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn post_whose_success_answer_is_too_large_has_an_unknown_outcome() {
        let routes = axum::Router::new().route(
            "/v2.0/ports",
            axum::routing::post(|| async {
                let port = json!({"port": {"id": "p1", "description": "x".repeat(4096)}});
                (axum::http::StatusCode::CREATED, port.to_string())
            }),
        );
        let options = ClientOptions {
            max_response_bytes: 1024,
            ..ClientOptions::default()
        };
        let session = fake_neutron(routes, options).await;
        let err = session.network().create_port(&a_port()).await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_carry_no_token() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // The other origin counts what reaches it.
        let (reached, with_token) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (r, t) = (reached.clone(), with_token.clone());
        let other = serve(
            axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
                r.fetch_add(1, Ordering::SeqCst);
                if headers.contains_key("x-auth-token") {
                    t.fetch_add(1, Ordering::SeqCst);
                }
                async { r#"{"networks": [], "token": {}}"# }
            }),
        )
        .await;

        // A Neutron that redirects listings to the other origin.
        let to = format!("{other}/v2.0/networks?from=redirect");
        let routes = axum::Router::new().route(
            "/v2.0/networks",
            axum::routing::get(move || {
                let to = to.clone();
                async move { axum::response::Redirect::temporary(&to) }
            }),
        );
        let session = fake_neutron(routes, ClientOptions::default()).await;
        let filter = crate::openstack::network::ListFilter::default();
        let listed = session.network().list_networks(&filter).await;

        // A Keystone that redirects the token request (with the password in its body).
        let to = format!("{other}/v3/auth/tokens");
        let keystone = serve(axum::Router::new().route(
            "/v3/auth/tokens",
            axum::routing::post(move || {
                let to = to.clone();
                async move { axum::response::Redirect::permanent(&to) }
            }),
        ))
        .await;
        let session = Session::new(
            cloud_at(&format!("{keystone}/v3")),
            None,
            ClientOptions::default(),
            Metrics::default(),
        )
        .unwrap();
        let issued = session.authenticate().await;

        // Neither the token nor the password reached the other origin.
        assert_eq!(with_token.load(Ordering::SeqCst), 0);
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        let err = issued.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::PERMANENT_REDIRECT));
        let err = listed.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::TEMPORARY_REDIRECT));
        assert!(
            err.to_string().ends_with(&format!(
                "the service redirects to {other}/v2.0/networks; capow follows no redirects (they could carry the token elsewhere), so give that URL as auth_url or in the service catalog"
            )),
            "{err}"
        );
    }

    #[test]
    fn tokens_are_renewed_before_expiry_or_at_half_their_lifetime() {
        let renew_before = Duration::from_secs(600);
        let after = |secs| renew_after(Duration::from_secs(secs), renew_before);
        assert_eq!(after(3600), Duration::from_secs(3000));
        assert_eq!(after(1200), Duration::from_secs(600));
        assert_eq!(after(60), Duration::from_secs(30));
        assert_eq!(after(0), Duration::ZERO);
    }

    /// A Keystone on 127.0.0.1 whose tokens (`tok-1`, `tok-2`, ...) live `lifetime`, counting
    /// the tokens issued and the requests in flight at once (also those of `routes`, which
    /// see the same counter through [`InFlight`]); its catalog points Neutron at itself.
    async fn counting_cloud(
        routes: axum::Router<Arc<InFlight>>,
        lifetime: Duration,
        options: ClientOptions,
    ) -> (Session, Arc<InFlight>) {
        use axum::extract::State;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(InFlight::default());
        let app = routes
            .route(
                "/v3/auth/tokens",
                axum::routing::post(move |State(state): State<Arc<InFlight>>| {
                    let base = base.clone();
                    async move {
                        let _busy = state.enter();
                        let n = state.tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let now = Timestamp::now();
                        let body = json!({"token": {
                            "issued_at": now.to_string(),
                            "expires_at": (now + lifetime).to_string(),
                            "project": {"id": "p"},
                            "catalog": [{"type": "network", "endpoints": [{"interface": "public", "region_id": "R", "url": base}]}]}});
                        ([("X-Subject-Token", format!("tok-{n}"))], body.to_string())
                    }
                }),
            )
            .with_state(state.clone());
        let cloud = cloud_at(&format!("http://{}/v3", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let session = Session::new(cloud, None, options, Metrics::default()).unwrap();
        (session, state)
    }

    /// Counters of [`counting_cloud`].
    #[derive(Default)]
    struct InFlight {
        tokens: std::sync::atomic::AtomicUsize,
        now: std::sync::atomic::AtomicUsize,
        max: std::sync::atomic::AtomicUsize,
    }

    impl InFlight {
        /// Counts a request in flight until the guard is dropped.
        fn enter(&self) -> impl Drop + '_ {
            use std::sync::atomic::Ordering;
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
            struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Leave<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Leave(&self.now)
        }
    }

    #[tokio::test]
    async fn a_token_living_60_seconds_is_not_issued_for_every_request() {
        use std::sync::atomic::Ordering;
        let routes = axum::Router::new().route(
            "/v2.0/networks",
            axum::routing::get(|| async { r#"{"networks": []}"# }),
        );
        let (session, counts) =
            counting_cloud(routes, Duration::from_secs(60), ClientOptions::default()).await;
        let filter = crate::openstack::network::ListFilter::default();
        for _ in 0..5 {
            session.network().list_networks(&filter).await.unwrap();
        }
        assert_eq!(counts.tokens.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn token_requests_count_against_the_in_flight_bound() {
        use axum::extract::State;
        use std::sync::atomic::Ordering;
        // Listings with the first token are refused (revoked), so one caller renews the token
        // while the others' listings are in flight.
        let routes = axum::Router::new().route(
            "/v2.0/networks",
            axum::routing::get(
                |State(state): State<Arc<InFlight>>, headers: axum::http::HeaderMap| async move {
                    let _busy = state.enter();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if headers.get("x-auth-token").is_some_and(|t| t == "tok-1") {
                        (axum::http::StatusCode::UNAUTHORIZED, "{}")
                    } else {
                        (axum::http::StatusCode::OK, r#"{"networks": []}"#)
                    }
                },
            ),
        );
        let options = ClientOptions {
            max_in_flight: 1,
            ..ClientOptions::default()
        };
        let (session, counts) = counting_cloud(routes, Duration::from_secs(3600), options).await;
        let filter = crate::openstack::network::ListFilter::default();
        let calls = (0..3).map(|_| async { session.network().list_networks(&filter).await });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        assert!(counts.tokens.load(Ordering::SeqCst) >= 2);
        assert_eq!(counts.max.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_compute_and_block_storage_send_microversions() {
        assert_eq!(
            Service::Compute.microversion().map(|m| m.0),
            Some("compute 2.61")
        );
        assert_eq!(
            Service::BlockStorage.microversion().map(|m| m.0),
            Some("volume 3.0")
        );
        assert!(Service::Network.microversion().is_none());
        assert!(Service::Image.microversion().is_none());
    }
}

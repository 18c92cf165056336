//! A fault-injecting, counting HTTP proxy in front of an OpenStack cloud on loopback, for the
//! e2e tests (the program is `e2e/src/bin/osproxy.rs`; this module is its library, so a test can
//! run it in-process with [`Proxy::start`] or as a process with [`ProxyProcess::spawn`]).
//!
//! # Why
//!
//! The e2e OpenStack (`e2e/openstack/up.sh`) answers every request correctly and quickly. To see
//! how capow behaves when a cloud is slow, overloaded or flaky, and to count how many requests
//! capow sends per operation, the tests point capow's identity at this proxy instead of Keystone.
//!
//! # URL scheme
//!
//! The proxy listens on `http://127.0.0.1:<port>` (port 0 picks a free one) and serves:
//!
//! | path | goes to |
//! |---|---|
//! | `/_control/...` | the control API below (never forwarded, never counted) |
//! | `/_/<host:port>/<path>` | `http://<host:port>/<path>`: an endpoint of the service catalog |
//! | anything else, e.g. `/v3/auth/tokens` or `/identity/v3/...` | Keystone: the origin of the `auth_url` the proxy was started with, same path |
//!
//! So a clouds.yaml whose `auth_url` is `http://127.0.0.1:5000/v3` becomes
//! `http://127.0.0.1:<port>/v3` ([`clouds_yaml_via_proxy`] writes it). capow finds every other
//! service through the catalog of its token, so the proxy rewrites `token.catalog[].endpoints[].url`
//! in the answers of `POST /v3/auth/tokens`, `GET /v3/auth/tokens` and `GET /v3/auth/catalog`
//! (Keystone v3 API reference, "Authentication and token management":
//! <https://docs.openstack.org/api-ref/identity/v3/>): `http://127.0.0.1:8774/v2.1` becomes
//! `http://127.0.0.1:<port>/_/127.0.0.1:8774/v2.1`. It also rewrites absolute URLs of known
//! upstreams (Keystone and every catalog endpoint seen) in `Location` headers and in JSON
//! `links` (`"href"` values anywhere, and every string under a `"links"` key: Nova's and
//! Neutron's `[{"href", "rel"}]`, Keystone's `{"self", "next"}`), so that a client doing
//! version discovery or following pagination (keystoneauth, the `openstack` CLI) stays behind
//! the proxy. capow itself follows neither (it reads only the catalog and the bodies it asked
//! for: `src/openstack/session.rs`), but tests may use the CLI through the proxy.
//!
//! Bodies stream in both directions, unchanged, except JSON answers that may carry upstream
//! URLs: token and catalog answers (buffered up to 16 MiB), and other `application/json`
//! answers with a `Content-Length` of at most 4 MiB, which are rewritten only when they contain
//! a known upstream origin. Every header is forwarded unchanged (`X-Auth-Token`,
//! `OpenStack-API-Version`, `X-Subject-Token`, ...) except the hop-by-hop ones
//! (RFC 9110 §7.6.1: <https://www.rfc-editor.org/rfc/rfc9110#section-7.6.1>) and `Host`, which
//! is set to the upstream's. Upstreams must be plain HTTP on loopback (127.0.0.0/8, `localhost`,
//! `[::1]`), like the e2e cloud (`e2e/openstack/NOTES.md`: "No TLS"); the proxy refuses any
//! other target with 403, so it never sends a packet off the machine.
//!
//! # Counting
//!
//! Every forwarded request is counted by service (the catalog type of the endpoint it goes to,
//! `identity` for Keystone; `volumev3`/`volume` count as `block-storage`; `unknown` for an
//! address the catalog did not name), method, normalized operation and answer. The operation is
//! the method and the path below the catalog endpoint without its version segment, with IDs
//! replaced by `{id}`: `POST /servers`, `GET /servers/detail`, `DELETE /ports/{id}`,
//! `GET /volumes/detail` (from `/v3/<project>/volumes/detail`), `POST /auth/tokens`. A segment is
//! an ID when it is a UUID (with or without dashes), all digits, or follows a collection keyed
//! by name or ID ([`ID_COLLECTIONS`]) and is not `detail`. Answers are counted by status code,
//! with `reset` for a connection closed on purpose and `502`/`504` for upstream failures.
//!
//! # Faults
//!
//! A [`FaultSet`] is a seed and a list of [`FaultRule`]s. Each rule selects requests by service,
//! method and a regex over the normalized path (e.g. `^/servers$`), and applies a [`Fault`] at a
//! rate (0.0–1.0) within a time window (`start_after_secs`..`stop_after_secs` from when the set
//! was installed) and at most `max_count` times. The first rule that matches and draws a hit
//! wins; one fault per request. The draw for the n-th matching request of rule i is a pure
//! function of (seed, i, n) (SplitMix64, <https://prng.di.unimi.it/splitmix64.c>), so the same
//! seed, rules and sequence of requests give the same faults on every run; concurrent requests
//! can arrive in a different order, so repeatability holds per sequence of arrivals.
//!
//! Fault kinds: an answer with any status (500, 503, 429 with `Retry-After: <n>`, ...); a delay
//! of the whole answer, after the upstream answered (the upstream did the work; a client with a
//! shorter timeout gives up) or before forwarding; and a connection reset, either before
//! forwarding (the upstream never sees the request) or after the upstream answered (it did the
//! work, the client sees the connection close without an answer). A reset closes the TCP
//! connection without writing an answer (FIN; the kernel sends RST if request bytes are unread).
//! Answers a rule produced or delayed carry `X-Osproxy-Fault: <rule index>`.
//!
//! Each rule that answers with `retry_after` opens a back-off window of that many seconds for
//! the service of the faulted request; the counts report, per rule, how many requests of that
//! service arrived while one of its windows was open (`arrived_during_retry_after`), and each
//! window with its own count (`windows`: service, operation, opening time, length). A client
//! that honours `Retry-After` and sends nothing else to that service scores 0. The count is per
//! service, not per client or per request: capow's other callers of the same service (other
//! machines) are counted too.
//!
//! # Control API (same port)
//!
//! | request | effect |
//! |---|---|
//! | `GET /_control/counts` | [`Counts`] as JSON: per service, per rule |
//! | `POST /_control/counts/reset` | zeroes the request counts (the rules' counters stay; they restart when a set is installed) |
//! | `GET /_control/faults` | the installed [`FaultSet`] |
//! | `PUT /_control/faults` | installs a [`FaultSet`] (JSON); `seed` may be left out to keep the current one; `{"rules": []}` clears |
//!
//! ```json
//! {"seed": 7, "rules": [
//!   {"name": "nova-busy", "service": "compute", "method": "POST", "path": "^/servers$",
//!    "rate": 0.5, "max_count": 3, "fault": {"kind": "status", "code": 429, "retry_after": 2}},
//!   {"service": "network", "fault": {"kind": "delay", "ms": 40000}},
//!   {"service": "compute", "method": "DELETE", "fault": {"kind": "reset_after"}},
//!   {"service": "image", "start_after_secs": 10, "stop_after_secs": 20, "fault": {"kind": "status", "code": 503}}
//! ]}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod fake;

/// Token and catalog answers are buffered up to this size to rewrite the catalog.
const MAX_CATALOG_BODY: usize = 16 << 20;
/// Other JSON answers are rewritten only up to this `Content-Length`; larger ones stream.
const MAX_REWRITE_BODY: u64 = 4 << 20;
/// A control request body (a fault set) may be this large.
const MAX_CONTROL_BODY: usize = 1 << 20;
/// Upper bound of an upstream exchange (headers), so no request waits forever.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound of a delay fault.
const MAX_DELAY_MS: u64 = 600_000;
/// Distinct operations counted per service; more are counted as `other`.
const MAX_OPERATIONS: usize = 2000;
/// Distinct catalog endpoints remembered.
const MAX_ENDPOINTS: usize = 4096;
/// Arrivals remembered for [`Proxy::arrivals_since`] (the oldest are dropped first).
const MAX_ARRIVALS: usize = 16_384;

/// Collections whose next path segment is an ID or a name (counted as `{id}` unless it is
/// `detail`): Nova, Neutron, Glance, Cinder, Placement and Keystone resources capow or the CLI
/// address by ID or name.
pub const ID_COLLECTIONS: &[&str] = &[
    "servers",
    "flavors",
    "os-keypairs",
    "os-server-groups",
    "os-extra_specs",
    "images",
    "networks",
    "subnets",
    "ports",
    "routers",
    "security-groups",
    "security-group-rules",
    "trunks",
    "floatingips",
    "volumes",
    "attachments",
    "snapshots",
    "tags",
    "metadata",
    "resource_providers",
    "traits",
    "users",
    "projects",
    "domains",
    "application_credentials",
    "extensions",
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

// ---------------------------------------------------------------------------------------------
// Fault configuration

/// What a matching request gets instead of (or on top of) the upstream's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer `code` without forwarding (500, 503, 429, ...), with `Retry-After: <retry_after>`
    /// when set.
    Status {
        /// HTTP status code, 400–599.
        code: u16,
        /// Seconds for the `Retry-After` header; opens a back-off window (module docs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
    /// Hold the answer `ms` milliseconds: after the upstream answered (default), or before
    /// forwarding when `before` is true.
    Delay {
        /// Milliseconds, at most 600000.
        ms: u64,
        /// Delay before forwarding instead of after the upstream answered.
        #[serde(default)]
        before: bool,
    },
    /// A busy upstream: the request (its body read in full) waits `ms` milliseconds in a queue
    /// the client cannot cancel, then goes upstream even when the client has gone meanwhile
    /// (as a busy API server still processes what it accepted); the client gets the answer if
    /// it is still there. Unlike `Delay { before: true }`, a client that dies or times out
    /// during the wait does not stop the request.
    Busy {
        /// Milliseconds, at most 600000.
        ms: u64,
    },
    /// Close the connection without forwarding and without answering.
    ResetBefore,
    /// Forward, wait for the upstream's whole answer, then close the connection without
    /// answering.
    ResetAfter,
}

/// One fault rule. Unset selectors match everything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// A name for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Service (catalog type: `identity`, `compute`, `network`, `image`, `block-storage`,
    /// `placement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// HTTP method (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regex over the normalized path, e.g. `^/servers$` or `^/ports/\{id\}$`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Share of the matching requests that get the fault, 0.0–1.0.
    #[serde(default = "one")]
    pub rate: f64,
    /// The rule is active from this many seconds after the set was installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_after_secs: Option<f64>,
    /// The rule is inactive from this many seconds after the set was installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_secs: Option<f64>,
    /// The rule injects at most this many faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// The fault.
    pub fault: Fault,
}

fn one() -> f64 {
    1.0
}

impl FaultRule {
    /// A rule that applies `fault` to every request (narrow it with the fields).
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            name: None,
            service: None,
            method: None,
            path: None,
            rate: 1.0,
            start_after_secs: None,
            stop_after_secs: None,
            max_count: None,
            fault,
        }
    }
}

/// A seed and the rules, as installed with `PUT /_control/faults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSet {
    /// Seed of the draws; `None` in a PUT keeps the current seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

struct ActiveRule {
    rule: FaultRule,
    path: Option<regex::Regex>,
    stats: RuleStats,
    windows: Vec<WindowReport>,
}

/// Back-off windows reported per rule; later ones are counted in [`RuleStats`] only.
const MAX_WINDOW_REPORTS: usize = 1000;

/// One back-off window a rule opened with `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    /// Service of the faulted request.
    pub service: String,
    /// Operation of the faulted request, e.g. `POST /servers`.
    pub operation: String,
    /// When it opened, in milliseconds since the fault set was installed.
    pub opened_ms: u64,
    /// Its length (the `Retry-After` value), in seconds.
    pub retry_after_secs: u64,
    /// Requests of `service` that arrived while it was open.
    pub arrived: u64,
}

/// Counters of one rule since its set was installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStats {
    /// Requests that matched the selectors inside the window and budget (each drew once).
    pub matched: u64,
    /// Faults injected.
    pub injected: u64,
    /// Back-off windows opened (answers with `Retry-After`).
    pub retry_after_windows: u64,
    /// Requests of the faulted service that arrived while one of this rule's back-off windows
    /// was open.
    pub arrived_during_retry_after: u64,
}

/// One rule with its counters, as reported by `GET /_control/counts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleReport {
    /// Position in the set.
    pub index: usize,
    /// The rule.
    pub rule: FaultRule,
    /// Its counters.
    #[serde(flatten)]
    pub stats: RuleStats,
    /// The back-off windows it opened, oldest first (at most 1000).
    pub windows: Vec<WindowReport>,
}

impl FaultSet {
    fn compile(&self) -> Result<Vec<ActiveRule>> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if !(0.0..=1.0).contains(&r.rate) {
                    bail!("rule {i}: rate {} is not within 0.0..=1.0", r.rate);
                }
                match r.fault {
                    Fault::Status { code, .. } if !(400..=599).contains(&code) => {
                        bail!("rule {i}: status {code} is not within 400..=599")
                    }
                    Fault::Delay { ms, .. } | Fault::Busy { ms } if ms > MAX_DELAY_MS => {
                        bail!("rule {i}: delay {ms} ms is above {MAX_DELAY_MS}")
                    }
                    _ => {}
                }
                for s in [r.start_after_secs, r.stop_after_secs]
                    .into_iter()
                    .flatten()
                {
                    if !s.is_finite() || s < 0.0 {
                        bail!("rule {i}: window bound {s} is not a non-negative number");
                    }
                }
                let path = r
                    .path
                    .as_deref()
                    .map(regex::Regex::new)
                    .transpose()
                    .with_context(|| format!("rule {i}: path regex"))?;
                Ok(ActiveRule {
                    rule: r.clone(),
                    path,
                    stats: RuleStats::default(),
                    windows: Vec::new(),
                })
            })
            .collect()
    }
}

/// SplitMix64's output function (<https://prng.di.unimi.it/splitmix64.c>).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The draw of the `n`-th matching request of rule `rule`: uniform in [0, 1).
fn draw(seed: u64, rule: usize, n: u64) -> f64 {
    let x = splitmix64(splitmix64(seed ^ splitmix64(rule as u64)) ^ n);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------------------------
// Counts

/// Requests of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCounts {
    /// All requests.
    pub total: u64,
    /// By HTTP method.
    pub methods: BTreeMap<String, u64>,
    /// By normalized operation, e.g. `GET /servers/detail`.
    pub operations: BTreeMap<String, u64>,
    /// By answer: status code, `reset`, or `502`/`504` for upstream failures.
    pub responses: BTreeMap<String, u64>,
}

/// What `GET /_control/counts` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// All counted requests.
    pub total: u64,
    /// By service.
    pub services: BTreeMap<String, ServiceCounts>,
    /// Seed of the installed fault set.
    pub seed: u64,
    /// The installed rules with their counters.
    pub faults: Vec<RuleReport>,
}

impl Counts {
    /// Requests of `service` for `operation` (e.g. `compute`, `GET /servers/detail`).
    pub fn operation(&self, service: &str, operation: &str) -> u64 {
        self.services
            .get(service)
            .and_then(|s| s.operations.get(operation))
            .copied()
            .unwrap_or(0)
    }

    /// Requests of `service`.
    pub fn service(&self, service: &str) -> u64 {
        self.services.get(service).map_or(0, |s| s.total)
    }

    /// Answers of `service` with `response` (a status code such as `429`, or `reset`).
    pub fn responses(&self, service: &str, response: &str) -> u64 {
        self.services
            .get(service)
            .and_then(|s| s.responses.get(response))
            .copied()
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    authority: String,
    path: String,
    service: String,
}

struct Faults {
    seed: u64,
    installed: Instant,
    rules: Vec<ActiveRule>,
    /// Open back-off windows: (rule, index in its reports if recorded, service, end).
    windows: Vec<(usize, Option<usize>, String, Instant)>,
}

/// One counted request, when it arrived (for latency measurements: [`Proxy::arrivals_since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// When the proxy received it.
    pub at: Instant,
    /// Service, as counted (e.g. `compute`).
    pub service: String,
    /// Normalized operation, as counted (e.g. `POST /servers`).
    pub operation: String,
}

struct State {
    endpoints: Vec<Endpoint>,
    total: u64,
    arrivals: std::collections::VecDeque<Arrival>,
    services: BTreeMap<String, ServiceCounts>,
    faults: Faults,
}

struct Shared {
    /// `http://127.0.0.1:<port>`.
    origin: String,
    /// Keystone's `host:port`.
    keystone: String,
    /// Path of Keystone's root below its origin (`""`, or e.g. `/identity`).
    keystone_base: String,
    client: Client<HttpConnector, Incoming>,
    /// For [`Fault::Busy`]: requests whose body was read in full first.
    buffered: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Whether `authority` (host:port) is Keystone or a catalog endpoint seen.
    fn known(&self, state: &State, authority: &str) -> bool {
        authority == self.keystone || state.endpoints.iter().any(|e| e.authority == authority)
    }

    /// `url` pointing back at the proxy when it is `http://` on a known upstream.
    fn rewrite_url(&self, state: &State, url: &str) -> Option<String> {
        let (authority, rest) = split_http_url(url)?;
        if !self.known(state, &authority) {
            return None;
        }
        Some(if authority == self.keystone {
            format!("{}{rest}", self.origin)
        } else {
            format!("{}/_/{authority}{rest}", self.origin)
        })
    }

    fn count_response(&self, service: &str, response: &str) {
        let mut state = self.lock();
        if let Some(s) = state.services.get_mut(service) {
            *s.responses.entry(response.to_owned()).or_default() += 1;
        }
    }

    fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            total: state.total,
            services: state.services.clone(),
            seed: state.faults.seed,
            faults: state
                .faults
                .rules
                .iter()
                .enumerate()
                .map(|(index, r)| RuleReport {
                    index,
                    rule: r.rule.clone(),
                    stats: r.stats,
                    windows: r.windows.clone(),
                })
                .collect(),
        }
    }

    fn reset_counts(&self) {
        let mut state = self.lock();
        state.total = 0;
        state.services.clear();
        state.arrivals.clear();
    }

    fn install(&self, set: &FaultSet) -> Result<()> {
        let rules = set.compile()?;
        let mut state = self.lock();
        let seed = set.seed.unwrap_or(state.faults.seed);
        state.faults = Faults {
            seed,
            installed: Instant::now(),
            rules,
            windows: Vec::new(),
        };
        Ok(())
    }

    fn fault_set(&self) -> FaultSet {
        let state = self.lock();
        FaultSet {
            seed: Some(state.faults.seed),
            rules: state.faults.rules.iter().map(|r| r.rule.clone()).collect(),
        }
    }

    /// Counts an arriving request and decides its fault.
    fn arrive(&self, service: &str, method: &Method, path: &str) -> Option<(usize, Fault)> {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.total += 1;
        let op = format!("{method} {path}");
        let counts = state.services.entry(service.to_owned()).or_default();
        counts.total += 1;
        *counts.methods.entry(method.to_string()).or_default() += 1;
        let key = if counts.operations.len() < MAX_OPERATIONS || counts.operations.contains_key(&op)
        {
            op.clone()
        } else {
            "other".to_owned()
        };
        *counts.operations.entry(key).or_default() += 1;
        if state.arrivals.len() >= MAX_ARRIVALS {
            state.arrivals.pop_front();
        }
        state.arrivals.push_back(Arrival {
            at: now,
            service: service.to_owned(),
            operation: op.clone(),
        });

        let faults = &mut state.faults;
        faults.windows.retain(|(_, _, _, end)| *end > now);
        let mut open = BTreeSet::new();
        for (i, w, s, _) in &faults.windows {
            if s != service {
                continue;
            }
            open.insert(*i);
            if let Some(report) = w.and_then(|w| faults.rules.get_mut(*i)?.windows.get_mut(w)) {
                report.arrived += 1;
            }
        }
        for i in open {
            if let Some(r) = faults.rules.get_mut(i) {
                r.stats.arrived_during_retry_after += 1;
            }
        }

        let elapsed = now.duration_since(faults.installed).as_secs_f64();
        for (i, r) in faults.rules.iter_mut().enumerate() {
            let rule = &r.rule;
            let selected = rule
                .service
                .as_deref()
                .is_none_or(|s| service_type(s) == service)
                && rule
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && r.path.as_ref().is_none_or(|re| re.is_match(path))
                && rule.start_after_secs.is_none_or(|s| elapsed >= s)
                && rule.stop_after_secs.is_none_or(|s| elapsed < s)
                && rule.max_count.is_none_or(|k| r.stats.injected < k);
            if !selected {
                continue;
            }
            let n = r.stats.matched;
            r.stats.matched += 1;
            if draw(faults.seed, i, n) >= rule.rate {
                continue;
            }
            r.stats.injected += 1;
            if let Fault::Status {
                retry_after: Some(secs),
                ..
            } = rule.fault
            {
                r.stats.retry_after_windows += 1;
                let report = (r.windows.len() < MAX_WINDOW_REPORTS).then(|| {
                    r.windows.push(WindowReport {
                        service: service.to_owned(),
                        operation: op,
                        opened_ms: now.duration_since(faults.installed).as_millis() as u64,
                        retry_after_secs: secs,
                        arrived: 0,
                    });
                    r.windows.len() - 1
                });
                faults.windows.push((
                    i,
                    report,
                    service.to_owned(),
                    now + Duration::from_secs(secs),
                ));
            }
            return Some((i, rule.fault.clone()));
        }
        None
    }

    /// Remembers the catalog's endpoints (for counting and for which URLs to rewrite).
    fn learn(&self, catalog: &Value) {
        let mut state = self.lock();
        for svc in catalog.as_array().into_iter().flatten() {
            let service = service_type(svc["type"].as_str().unwrap_or("unknown"));
            for ep in svc["endpoints"].as_array().into_iter().flatten() {
                let Some((authority, rest)) = ep["url"].as_str().and_then(split_http_url) else {
                    continue;
                };
                let path = rest
                    .split(['?', '#'])
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/')
                    .to_owned();
                let e = Endpoint {
                    authority,
                    path,
                    service: service.to_owned(),
                };
                if !state.endpoints.contains(&e) && state.endpoints.len() < MAX_ENDPOINTS {
                    state.endpoints.push(e);
                }
            }
        }
    }

    /// Service and normalized path of a request to `authority` + `path`.
    fn classify(&self, authority: &str, path: &str) -> (String, String) {
        if authority == self.keystone {
            return ("identity".into(), normalize_path(path, &self.keystone_base));
        }
        let state = self.lock();
        let by_prefix = state
            .endpoints
            .iter()
            .filter(|e| e.authority == authority && under(path, &e.path))
            .max_by_key(|e| e.path.len());
        if let Some(e) = by_prefix {
            return (e.service.clone(), normalize_path(path, &e.path));
        }
        let services: BTreeSet<&str> = state
            .endpoints
            .iter()
            .filter(|e| e.authority == authority)
            .map(|e| e.service.as_str())
            .collect();
        let service = match services.len() {
            1 => services.into_iter().next().unwrap_or("unknown"),
            _ => "unknown",
        };
        (service.to_owned(), normalize_path(path, ""))
    }
}

fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The service type `t` is counted as (service-types authority,
/// <https://service-types.openstack.org/service-types.json>: `volumev3` and `volume` are
/// aliases of `block-storage`).
fn service_type(t: &str) -> &str {
    match t {
        "volumev3" | "volumev2" | "volume" | "block_storage" => "block-storage",
        other => other,
    }
}

/// `http://host[:port]<rest>` → (`host:port`, `rest`); `None` for other schemes.
fn split_http_url(url: &str) -> Option<(String, &str)> {
    let after = url.strip_prefix("http://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let authority = if has_port {
        authority.to_ascii_lowercase()
    } else {
        format!("{}:80", authority.to_ascii_lowercase())
    };
    Some((authority, rest))
}

/// Whether `authority` (host:port) names a loopback host.
fn is_loopback(authority: &str) -> bool {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The normalized path of `path` below endpoint path `prefix` (module docs).
pub fn normalize_path(path: &str, prefix: &str) -> String {
    let rel = if under(path, prefix) {
        &path[prefix.len()..]
    } else {
        path
    };
    let mut segments: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first().is_some_and(|s| is_version(s)) {
        segments.remove(0);
    }
    let mut out = String::new();
    let mut prev = "";
    for seg in segments {
        out.push('/');
        let id = looks_like_id(seg) || (ID_COLLECTIONS.contains(&prev) && seg != "detail");
        out.push_str(if id { "{id}" } else { seg });
        prev = seg;
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn is_version(seg: &str) -> bool {
    seg.strip_prefix('v').is_some_and(|v| {
        let mut parts = v.split('.');
        let ok = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        ok(parts.next()) && parts.all(|p| ok(Some(p)))
    })
}

fn looks_like_id(seg: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = seg.len() == 36
        && seg.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && hex(&seg.replace('-', ""));
    uuid || (seg.len() == 32 && hex(seg))
        || (!seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()))
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// How to start a proxy.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen: a loopback address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Keystone's `auth_url` (plain HTTP on loopback), e.g. `http://127.0.0.1:5000/v3`.
    pub auth_url: String,
    /// Fault rules and seed in force from the start (seed 0 when unset).
    pub faults: FaultSet,
}

impl Config {
    /// A proxy on a free loopback port in front of `auth_url`, without faults.
    pub fn new(auth_url: &str) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth_url: auth_url.to_owned(),
            faults: FaultSet::default(),
        }
    }
}

/// A proxy running in this process; stops when dropped or with [`Proxy::stop`].
pub struct Proxy {
    addr: SocketAddr,
    auth_url: String,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds and starts serving.
    ///
    /// # Errors
    /// A non-loopback listen address or upstream, an `auth_url` that is not `http://`, an
    /// invalid fault set, or a failed bind.
    pub async fn start(config: Config) -> Result<Proxy> {
        if !config.listen.ip().is_loopback() {
            bail!("osproxy listens on loopback only, not {}", config.listen);
        }
        let (keystone, rest) = split_http_url(&config.auth_url)
            .with_context(|| format!("auth_url {:?} is not http://", config.auth_url))?;
        if !is_loopback(&keystone) {
            bail!("Keystone {keystone} is not on loopback");
        }
        let auth_path = rest
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        let keystone_base = auth_path
            .strip_suffix("/v3")
            .unwrap_or(auth_path)
            .to_owned();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind {}", config.listen))?;
        let addr = listener.local_addr()?;
        let origin = format!("http://{addr}");
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector.clone());
        let buffered = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let shared = Arc::new(Shared {
            origin: origin.clone(),
            keystone,
            keystone_base,
            client,
            buffered,
            state: Mutex::new(State {
                endpoints: Vec::new(),
                total: 0,
                arrivals: std::collections::VecDeque::new(),
                services: BTreeMap::new(),
                faults: Faults {
                    seed: 0,
                    installed: Instant::now(),
                    rules: Vec::new(),
                    windows: Vec::new(),
                },
            }),
        });
        shared.install(&config.faults)?;
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), rx));
        Ok(Proxy {
            addr,
            auth_url: format!("{origin}{auth_path}"),
            shared,
            shutdown,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.shared.origin.clone()
    }

    /// The `auth_url` to give clients: the upstream's path on the proxy's origin.
    pub fn auth_url(&self) -> String {
        self.auth_url.clone()
    }

    /// The counts, as `GET /_control/counts` answers them.
    pub fn counts(&self) -> Counts {
        self.shared.counts()
    }

    /// Zeroes the request counts (`POST /_control/counts/reset`).
    pub fn reset_counts(&self) {
        self.shared.reset_counts();
    }

    /// The requests that arrived at or after `since`, oldest first (the last 16,384 requests
    /// are remembered; reset with the counts).
    pub fn arrivals_since(&self, since: Instant) -> Vec<Arrival> {
        self.shared
            .lock()
            .arrivals
            .iter()
            .filter(|a| a.at >= since)
            .cloned()
            .collect()
    }

    /// Installs `set` (`PUT /_control/faults`).
    ///
    /// # Errors
    /// An invalid rule (rate, status, delay, window or regex).
    pub fn set_faults(&self, set: &FaultSet) -> Result<()> {
        self.shared.install(set)
    }

    /// `clouds_yaml` with cloud `cloud`'s `auth_url` pointing at this proxy.
    ///
    /// # Errors
    /// As [`clouds_yaml_via_proxy`].
    pub fn clouds_yaml(&self, clouds_yaml: &str, cloud: &str) -> Result<String> {
        clouds_yaml_via_proxy(clouds_yaml, cloud, &self.url())
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            // EMFILE and the like: back off a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// The error that makes hyper close the connection without answering.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("osproxy: connection reset on purpose")
    }
}

impl std::error::Error for Reset {}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: std::convert::Infallible| -> BoxError { match e {} })
        .boxed_unsync()
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Reset> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/_control/") {
        return Ok(control(&shared, req, rest).await);
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    // Where it goes: `/_/<authority><rest>` or Keystone.
    let (authority, upstream_pq) = match path_and_query.strip_prefix("/_/") {
        Some(after) => {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            let (authority, rest) = after.split_at(end);
            let Some((authority, _)) = split_http_url(&format!("http://{authority}")) else {
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    format!("osproxy: bad target {authority:?}\n"),
                ));
            };
            let rest = if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            };
            (authority, rest)
        }
        None => (shared.keystone.clone(), path_and_query.clone()),
    };
    if !is_loopback(&authority) {
        return Ok(plain(
            StatusCode::FORBIDDEN,
            format!(
                "osproxy: {authority} is not on loopback; the proxy forwards to loopback only\n"
            ),
        ));
    }
    let upstream_path = upstream_pq.split('?').next().unwrap_or("/").to_owned();
    let (service, norm) = shared.classify(&authority, &upstream_path);
    let method = req.method().clone();
    let fault = shared.arrive(&service, &method, &norm);

    let exchange = Exchange {
        shared: &shared,
        authority: &authority,
        upstream_pq: &upstream_pq,
        service: &service,
    };
    let Some((rule, fault)) = fault else {
        return Ok(exchange.forward(req, None, true).await);
    };
    match fault {
        Fault::Status { code, retry_after } => {
            shared.count_response(&service, &code.to_string());
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = json_response(
                status,
                &json!({"error": {"code": code, "title": status.canonical_reason().unwrap_or(""),
                    "message": format!("osproxy: fault injected by rule {rule}")}}),
            );
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            mark(&mut resp, rule);
            Ok(resp)
        }
        Fault::Delay { ms, before: true } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut resp = exchange.forward(req, None, true).await;
            mark(&mut resp, rule);
            Ok(resp)
        }
        Fault::Delay { ms, before: false } => {
            let mut resp = exchange
                .forward(req, Some(Duration::from_millis(ms)), true)
                .await;
            mark(&mut resp, rule);
            Ok(resp)
        }
        Fault::Busy { ms } => {
            let mut resp = exchange
                .forward_detached(req, Duration::from_millis(ms))
                .await;
            mark(&mut resp, rule);
            Ok(resp)
        }
        Fault::ResetBefore => {
            shared.count_response(&service, "reset");
            Err(Reset)
        }
        Fault::ResetAfter => {
            let resp = exchange.forward(req, None, false).await;
            // Read the whole answer so the upstream finished its side, then drop it.
            let _ = tokio::time::timeout(UPSTREAM_TIMEOUT, resp.into_body().collect()).await;
            shared.count_response(&service, "reset");
            Err(Reset)
        }
    }
}

fn mark(resp: &mut Response<Body>, rule: usize) {
    resp.headers_mut()
        .insert("x-osproxy-fault", HeaderValue::from(rule));
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
fn hop_by_hop(name: &HeaderName, connection: &[String]) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) || connection.iter().any(|c| c == name.as_str())
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        if !hop_by_hop(name, &connection) {
            to.append(name.clone(), value.clone());
        }
    }
}

struct Exchange<'a> {
    shared: &'a Shared,
    authority: &'a str,
    upstream_pq: &'a str,
    service: &'a str,
}

impl Exchange<'_> {
    /// Forwards `req` upstream and returns the (rewritten) answer, held `hold` first; counts
    /// the answer when `count`.
    async fn forward(
        &self,
        req: Request<Incoming>,
        hold: Option<Duration>,
        count: bool,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let uri = format!("http://{}{}", self.authority, self.upstream_pq);
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        match uri.parse() {
            Ok(u) => *upstream.uri_mut() = u,
            Err(e) => {
                self.shared.count_response(self.service, "502");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("osproxy: bad upstream URI {uri}: {e}\n"),
                );
            }
        }
        copy_headers(&parts.headers, upstream.headers_mut());
        upstream.headers_mut().remove(header::HOST);
        if let Ok(host) = HeaderValue::from_str(self.authority) {
            upstream.headers_mut().insert(header::HOST, host);
        }
        let result =
            tokio::time::timeout(UPSTREAM_TIMEOUT, self.shared.client.request(upstream)).await;
        let resp = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.shared.count_response(self.service, "502");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("osproxy: upstream {}: {e}\n", self.authority),
                );
            }
            Err(_) => {
                self.shared.count_response(self.service, "504");
                return plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "osproxy: upstream {} did not answer within {UPSTREAM_TIMEOUT:?}\n",
                        self.authority
                    ),
                );
            }
        };
        let resp = self.rewrite(&parts.method, resp).await;
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
        }
        if count {
            self.shared
                .count_response(self.service, resp.status().as_str());
        }
        resp
    }

    /// [`Fault::Busy`]: reads the request body, then forwards it after `wait` from a task of its
    /// own, which finishes even when the client is gone and this future is dropped.
    async fn forward_detached(&self, req: Request<Incoming>, wait: Duration) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("osproxy: reading the request: {e}\n"),
                );
            }
        };
        let uri = format!("http://{}{}", self.authority, self.upstream_pq);
        let mut upstream = Request::new(Full::new(bytes));
        *upstream.method_mut() = parts.method.clone();
        match uri.parse() {
            Ok(u) => *upstream.uri_mut() = u,
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("osproxy: bad upstream URI {uri}: {e}\n"),
                );
            }
        }
        copy_headers(&parts.headers, upstream.headers_mut());
        upstream.headers_mut().remove(header::HOST);
        if let Ok(host) = HeaderValue::from_str(self.authority) {
            upstream.headers_mut().insert(header::HOST, host);
        }
        let client = self.shared.buffered.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            tokio::time::timeout(UPSTREAM_TIMEOUT, client.request(upstream)).await
        });
        match task.await {
            Ok(Ok(Ok(resp))) => {
                let resp = self.rewrite(&parts.method, resp).await;
                self.shared
                    .count_response(self.service, resp.status().as_str());
                resp
            }
            Ok(Ok(Err(e))) => {
                self.shared.count_response(self.service, "502");
                plain(
                    StatusCode::BAD_GATEWAY,
                    format!("osproxy: upstream {}: {e}\n", self.authority),
                )
            }
            _ => {
                self.shared.count_response(self.service, "504");
                plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("osproxy: upstream {} did not answer\n", self.authority),
                )
            }
        }
    }

    async fn rewrite(&self, method: &Method, resp: Response<Incoming>) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let mut headers = HeaderMap::new();
        copy_headers(&parts.headers, &mut headers);
        if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            let new = {
                let state = self.shared.lock();
                self.shared.rewrite_url(&state, loc)
            };
            if let Some(v) = new.and_then(|n| HeaderValue::from_str(&n).ok()) {
                headers.insert(header::LOCATION, v);
            }
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let path = self.upstream_pq.split('?').next().unwrap_or("");
        let catalog = self.authority == self.shared.keystone
            && (path.ends_with("/v3/auth/tokens") || path.ends_with("/v3/auth/catalog"))
            && matches!(*method, Method::GET | Method::POST);
        let small = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= MAX_REWRITE_BODY);
        let mut builder = Response::builder()
            .status(parts.status)
            .version(hyper::Version::HTTP_11);
        if !(json && (catalog || small)) || *method == Method::HEAD {
            if let Some(h) = builder.headers_mut() {
                *h = headers;
            }
            return builder
                .body(body.map_err(BoxError::from).boxed_unsync())
                .unwrap_or_else(|e| plain(StatusCode::BAD_GATEWAY, format!("osproxy: {e}\n")));
        }
        let bytes = match Limited::new(body, MAX_CATALOG_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("osproxy: reading the upstream answer: {e}\n"),
                );
            }
        };
        let bytes = self.rewrite_json(bytes, catalog);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        builder
            .body(full(bytes))
            .unwrap_or_else(|e| plain(StatusCode::BAD_GATEWAY, format!("osproxy: {e}\n")))
    }

    fn rewrite_json(&self, bytes: Bytes, catalog: bool) -> Bytes {
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
            return bytes;
        };
        let pointer = if value.pointer("/token/catalog").is_some() {
            "/token/catalog"
        } else {
            "/catalog"
        };
        if catalog && let Some(cat) = value.pointer(pointer) {
            self.shared.learn(cat);
        }
        let state = self.shared.lock();
        let mentions_upstream = {
            let text = String::from_utf8_lossy(&bytes);
            std::iter::once(self.shared.keystone.as_str())
                .chain(state.endpoints.iter().map(|e| e.authority.as_str()))
                .any(|a| text.contains(a))
        };
        if !mentions_upstream {
            return bytes;
        }
        let mut changed = false;
        if catalog && let Some(cat) = value.pointer_mut(pointer) {
            for svc in cat.as_array_mut().into_iter().flatten() {
                let endpoints = svc.get_mut("endpoints").and_then(Value::as_array_mut);
                for ep in endpoints.into_iter().flatten() {
                    if let Some(new) = ep["url"]
                        .as_str()
                        .and_then(|u| self.shared.rewrite_url(&state, u))
                    {
                        ep["url"] = Value::String(new);
                        changed = true;
                    }
                }
            }
        }
        rewrite_links(&mut value, false, &mut |s| {
            let new = self.shared.rewrite_url(&state, s);
            changed |= new.is_some();
            new
        });
        if !changed {
            return bytes;
        }
        serde_json::to_vec(&value).map(Bytes::from).unwrap_or(bytes)
    }
}

/// Rewrites `"href"` strings anywhere and every string under a `"links"` key.
fn rewrite_links(v: &mut Value, in_links: bool, f: &mut dyn FnMut(&str) -> Option<String>) {
    match v {
        Value::String(s) if in_links => {
            if let Some(new) = f(s) {
                *s = new;
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_links(item, in_links, f);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let links = in_links || k == "links" || k == "href";
                rewrite_links(item, links, f);
            }
        }
        _ => {}
    }
}

async fn control(shared: &Shared, req: Request<Incoming>, rest: &str) -> Response<Body> {
    match (req.method().clone(), rest) {
        (Method::GET, "counts") => json_response(StatusCode::OK, &shared.counts()),
        (Method::POST, "counts/reset") => {
            shared.reset_counts();
            json_response(StatusCode::OK, &shared.counts())
        }
        (Method::GET, "faults") => json_response(StatusCode::OK, &shared.fault_set()),
        (Method::PUT, "faults") => {
            let body = match Limited::new(req.into_body(), MAX_CONTROL_BODY)
                .collect()
                .await
            {
                Ok(c) => c.to_bytes(),
                Err(e) => return plain(StatusCode::BAD_REQUEST, format!("osproxy: body: {e}\n")),
            };
            let set: FaultSet = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        format!("osproxy: fault set: {e}\n"),
                    );
                }
            };
            match shared.install(&set) {
                Ok(()) => json_response(StatusCode::OK, &shared.fault_set()),
                Err(e) => plain(StatusCode::BAD_REQUEST, format!("osproxy: {e:#}\n")),
            }
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "osproxy control: GET counts, POST counts/reset, GET faults, PUT faults\n".into(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests

/// `clouds_yaml` (YAML or JSON) with cloud `cloud`'s `auth.auth_url` moved onto `proxy_url`
/// (`http://127.0.0.1:<port>`), keeping its path. Other clouds are unchanged. The result is
/// JSON, which is YAML.
///
/// # Errors
/// The text does not parse or has no such cloud with an `auth_url`.
pub fn clouds_yaml_via_proxy(clouds_yaml: &str, cloud: &str, proxy_url: &str) -> Result<String> {
    let mut v: Value = serde_yaml::from_str(clouds_yaml).context("parse clouds.yaml")?;
    let auth_url = v["clouds"][cloud]["auth"]["auth_url"]
        .as_str()
        .with_context(|| format!("clouds.{cloud}.auth.auth_url is missing"))?;
    let (_, rest) = split_http_url(auth_url)
        .with_context(|| format!("clouds.{cloud}.auth.auth_url {auth_url:?} is not http://"))?;
    let new = format!("{}{rest}", proxy_url.trim_end_matches('/'));
    v["clouds"][cloud]["auth"]["auth_url"] = Value::String(new);
    Ok(serde_json::to_string_pretty(&v)?)
}

/// Writes [`clouds_yaml_via_proxy`] of the file `from` to `to`.
///
/// # Errors
/// As [`clouds_yaml_via_proxy`], or I/O.
pub fn write_clouds_yaml_via_proxy(
    from: &Path,
    cloud: &str,
    proxy_url: &str,
    to: &Path,
) -> Result<()> {
    let text = std::fs::read_to_string(from).with_context(|| format!("read {}", from.display()))?;
    std::fs::write(to, clouds_yaml_via_proxy(&text, cloud, proxy_url)?)
        .with_context(|| format!("write {}", to.display()))
}

/// The `auth_url` of `cloud` in the clouds.yaml file `path`.
///
/// # Errors
/// I/O, or no such cloud with an `auth_url`.
pub fn auth_url_of(path: &Path, cloud: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let v: Value = serde_yaml::from_str(&text).context("parse clouds.yaml")?;
    v["clouds"][cloud]["auth"]["auth_url"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "clouds.{cloud}.auth.auth_url is missing in {}",
                path.display()
            )
        })
}

/// A client of a proxy's control API, for a proxy in another process.
#[derive(Clone, Debug)]
pub struct Control {
    url: String,
    http: reqwest::Client,
}

impl Control {
    /// The control API of the proxy at `url` (`http://127.0.0.1:<port>`).
    pub fn new(url: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Control {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// `GET /_control/counts`.
    ///
    /// # Errors
    /// Transport or decoding errors.
    pub async fn counts(&self) -> Result<Counts> {
        Ok(self
            .http
            .get(format!("{}/_control/counts", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// `POST /_control/counts/reset`.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn reset_counts(&self) -> Result<()> {
        self.http
            .post(format!("{}/_control/counts/reset", self.url))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// `PUT /_control/faults`.
    ///
    /// # Errors
    /// Transport errors, or the proxy's refusal (400 with its reason).
    pub async fn set_faults(&self, set: &FaultSet) -> Result<()> {
        let resp = self
            .http
            .put(format!("{}/_control/faults", self.url))
            .json(set)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "PUT /_control/faults: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The `osproxy` program running as a child process; killed when dropped.
pub struct ProxyProcess {
    child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The `auth_url` clients should use.
    pub auth_url: String,
}

impl ProxyProcess {
    /// Starts `bin` (the `osproxy` binary) with `args` and waits (at most 30 s) for it to print
    /// where it listens.
    ///
    /// # Errors
    /// The program did not start or exited before printing its address.
    pub async fn spawn(bin: &Path, args: &[&str]) -> Result<ProxyProcess> {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("osproxy stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let (mut url, mut auth_url) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..10 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok(Some(line))) = tokio::time::timeout(left, lines.next_line()).await else {
                break;
            };
            if let Some(u) = line.strip_prefix("listening ") {
                url = Some(u.trim().to_owned());
            } else if let Some(u) = line.strip_prefix("auth_url ") {
                auth_url = Some(u.trim().to_owned());
            }
            if url.is_some() && auth_url.is_some() {
                break;
            }
        }
        let (Some(url), Some(auth_url)) = (url, auth_url) else {
            let _ = child.kill().await;
            bail!("{} did not print its address", bin.display());
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ProxyProcess {
            child,
            url,
            auth_url,
        })
    }

    /// Its control API.
    pub fn control(&self) -> Control {
        Control::new(&self.url)
    }

    /// Stops it (SIGKILL) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{self, FakeCloud};
    use super::*;
    use reqwest::header::HeaderMap as ReqHeaders;

    fn http() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }

    async fn setup(faults: FaultSet) -> (FakeCloud, Proxy) {
        let cloud = FakeCloud::start().await;
        let mut config = Config::new(&cloud.auth_url());
        config.faults = faults;
        let proxy = Proxy::start(config).await.unwrap();
        (cloud, proxy)
    }

    fn token_body() -> Value {
        json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "demo",
            "domain": {"name": "Default"}, "password": "secret"}}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}})
    }

    /// Issues a token through the proxy: (token, catalog).
    async fn token(proxy: &Proxy) -> (String, Value) {
        let resp = http()
            .post(format!("{}/auth/tokens", proxy.auth_url()))
            .json(&token_body())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let token = resp.headers()["x-subject-token"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = resp.json().await.unwrap();
        (token, body["token"]["catalog"].clone())
    }

    fn endpoint(catalog: &Value, t: &str) -> String {
        catalog
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["type"] == t)
            .unwrap()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["interface"] == "public")
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn urls(catalog: &Value) -> Vec<String> {
        catalog
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
            .map(|e| e["url"].as_str().unwrap().to_owned())
            .collect()
    }

    fn headers(token: &str, version: Option<&str>) -> ReqHeaders {
        let mut h = ReqHeaders::new();
        h.insert("x-auth-token", token.parse().unwrap());
        if let Some(v) = version {
            h.insert("openstack-api-version", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn normalizes_operations() {
        let cases = [
            ("/v2.1/servers", "/v2.1", "/servers"),
            ("/v2.1/servers/detail", "/v2.1", "/servers/detail"),
            (
                "/v2.1/servers/6f1c2c4e-1111-4222-8333-944455556666/action",
                "/v2.1",
                "/servers/{id}/action",
            ),
            ("/v2.1/flavors/1", "/v2.1", "/flavors/{id}"),
            (
                "/v2.1/flavors/m1.tiny/os-extra_specs",
                "/v2.1",
                "/flavors/{id}/os-extra_specs",
            ),
            ("/v2.1/os-keypairs/capow-key", "/v2.1", "/os-keypairs/{id}"),
            (
                "/v2.0/ports/6f1c2c4e-1111-4222-8333-944455556666",
                "",
                "/ports/{id}",
            ),
            (
                "/v2.0/ports/6f1c2c4e-1111-4222-8333-944455556666/tags/a",
                "",
                "/ports/{id}/tags/{id}",
            ),
            (
                "/v2.0/routers/6f1c2c4e11114222833394445555666f/add_router_interface",
                "",
                "/routers/{id}/add_router_interface",
            ),
            (
                "/v3/0123456789abcdef0123456789abcdef/volumes/detail",
                "/v3/0123456789abcdef0123456789abcdef",
                "/volumes/detail",
            ),
            (
                "/v3/0123456789abcdef0123456789abcdef/volumes/detail",
                "",
                "/{id}/volumes/detail",
            ),
            (
                "/image/v2/images/6f1c2c4e-1111-4222-8333-944455556666/file",
                "/image",
                "/images/{id}/file",
            ),
            ("/v3/auth/tokens", "", "/auth/tokens"),
            (
                "/identity/v3/users/abc/application_credentials",
                "/identity",
                "/users/{id}/application_credentials",
            ),
            ("/", "", "/"),
            ("/v2.1/", "/v2.1", "/"),
            ("/v2.0", "", "/"),
        ];
        for (path, prefix, want) in cases {
            assert_eq!(
                normalize_path(path, prefix),
                want,
                "{path} below {prefix:?}"
            );
        }
    }

    #[test]
    fn splits_urls_and_knows_loopback() {
        assert_eq!(
            split_http_url("http://127.0.0.1:8774/v2.1"),
            Some(("127.0.0.1:8774".to_owned(), "/v2.1"))
        );
        assert_eq!(
            split_http_url("http://LocalHost"),
            Some(("localhost:80".to_owned(), ""))
        );
        assert_eq!(
            split_http_url("http://[::1]:9696?x"),
            Some(("[::1]:9696".to_owned(), "?x"))
        );
        assert_eq!(split_http_url("https://127.0.0.1:5000/v3"), None);
        assert_eq!(split_http_url("/v2/images?marker=x"), None);
        for a in [
            "127.0.0.1:5000",
            "127.9.9.9:1",
            "localhost:80",
            "[::1]:9696",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.1:5000",
            "192.0.2.1:80",
            "example.org:80",
            "[2001:db8::1]:80",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn draws_are_a_pure_function_of_seed_rule_and_ordinal() {
        let a: Vec<f64> = (0..1000).map(|n| draw(42, 1, n)).collect();
        let b: Vec<f64> = (0..1000).map(|n| draw(42, 1, n)).collect();
        assert_eq!(a, b);
        assert_ne!(a, (0..1000).map(|n| draw(43, 1, n)).collect::<Vec<_>>());
        assert_ne!(a, (0..1000).map(|n| draw(42, 2, n)).collect::<Vec<_>>());
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }

    #[test]
    fn rewrites_clouds_yaml() {
        let yaml = "clouds:\n  a:\n    auth:\n      auth_url: http://127.0.0.1:5000/identity/v3\n      username: u\n      password: p\n      project_name: demo\n    region_name: R\n  b:\n    auth:\n      auth_url: http://127.0.0.1:5000/v3\n";
        let out = clouds_yaml_via_proxy(yaml, "a", "http://127.0.0.1:4000/").unwrap();
        let v: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(
            v["clouds"]["a"]["auth"]["auth_url"],
            "http://127.0.0.1:4000/identity/v3"
        );
        assert_eq!(v["clouds"]["a"]["auth"]["username"], "u");
        assert_eq!(v["clouds"]["a"]["region_name"], "R");
        assert_eq!(
            v["clouds"]["b"]["auth"]["auth_url"],
            "http://127.0.0.1:5000/v3"
        );
        // capow reads the result.
        let c = capow::openstack::CloudConfig::from_clouds_yaml(&out, "a", None).unwrap();
        assert_eq!(c.auth_url, "http://127.0.0.1:4000/identity/v3");
        assert!(clouds_yaml_via_proxy(yaml, "missing", "http://127.0.0.1:4000").is_err());
    }

    #[tokio::test]
    async fn rewrites_the_catalog_forwards_unchanged_and_counts() {
        let (cloud, proxy) = setup(FaultSet::default()).await;
        let origin = proxy.url();
        let http = http();

        // Token issue: X-Subject-Token passes, every catalog URL points at the proxy.
        let (token, catalog) = token(&proxy).await;
        assert_eq!(token, fake::TOKEN);
        let all = urls(&catalog);
        assert_eq!(all.len(), 14);
        assert!(
            all.iter().all(|u| u.starts_with(&format!("{origin}/"))),
            "{all:?}"
        );
        assert_eq!(endpoint(&catalog, "identity"), format!("{origin}/v3"));
        let compute = endpoint(&catalog, "compute");
        assert_eq!(compute, format!("{origin}/_/{}/v2.1", cloud.compute));
        let network = endpoint(&catalog, "network");
        assert_eq!(network, format!("{origin}/_/{}", cloud.network));
        let volume = endpoint(&catalog, "block-storage");
        assert_eq!(
            volume,
            format!("{origin}/_/{}/v3/{}", cloud.compute, fake::PROJECT)
        );
        let image = endpoint(&catalog, "image");
        let placement = endpoint(&catalog, "placement");
        // The proxy sent Keystone the body unchanged.
        let sent = cloud
            .hits()
            .into_iter()
            .find(|h| h.host == "keystone")
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&sent.body).unwrap(),
            token_body()
        );
        assert_eq!(sent.headers["host"], cloud.keystone.to_string());

        // Token validation (GET) is rewritten too; both token headers pass both ways.
        let resp = http
            .get(format!("{}/auth/tokens", proxy.auth_url()))
            .header("x-auth-token", &token)
            .header("x-subject-token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-subject-token"], fake::TOKEN);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(urls(&body["token"]["catalog"]), all);
        // So is GET /v3/auth/catalog, with its Keystone-style links.
        let body: Value = http
            .get(format!("{}/auth/catalog", proxy.auth_url()))
            .headers(headers(&token, None))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(urls(&body["catalog"]), all);
        assert_eq!(body["links"]["self"], format!("{origin}/v3/auth/catalog"));
        // Version discovery links point back at the proxy.
        let body: Value = http
            .get(proxy.auth_url())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["version"]["links"][0]["href"], format!("{origin}/v3/"));

        // A GET through the rewritten catalog: path, query and headers arrive unchanged.
        let resp = http
            .get(format!("{compute}/servers/detail?tags=a,b&limit=5"))
            .headers(headers(&token, Some("compute 2.61")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["path"], "/v2.1/servers/detail");
        assert_eq!(echo["query"], "tags=a,b&limit=5");
        assert_eq!(echo["x_auth_token"], fake::TOKEN);
        assert_eq!(echo["openstack_api_version"], "compute 2.61");
        assert_eq!(
            echo["links"][0]["href"],
            format!("{compute}/servers/detail")
        );
        assert_eq!(
            echo["other"],
            format!("http://{}/not-a-link", cloud.compute),
            "only links are rewritten"
        );

        // A POST: the body arrives byte for byte; Location points back at the proxy.
        let body = format!("{{\"server\": {{\"name\": \"{}\"}}}}", "x".repeat(200_000));
        let resp = http
            .post(format!("{compute}/servers"))
            .headers(headers(&token, Some("compute 2.61")))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(
            resp.headers()["location"],
            format!("{compute}/servers/6f1c2c4e-1111-4222-8333-944455556666").as_str()
        );
        let posted = cloud
            .hits()
            .into_iter()
            .find(|h| h.method == "POST" && h.path == "/v2.1/servers")
            .unwrap();
        assert_eq!(posted.body, body.as_bytes());
        assert_eq!(posted.headers["content-type"], "application/json");
        assert_eq!(posted.headers["host"], cloud.compute.to_string());

        // A large binary answer arrives unchanged.
        let big = http
            .get(format!("{network}/v2.0/big"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            big.headers()["content-length"],
            fake::BIG_LEN.to_string().as_str()
        );
        assert!(big.bytes().await.unwrap() == fake::big_body());

        // Services that share a host are told apart by their endpoint paths.
        let port = "6f1c2c4e-1111-4222-8333-944455556666";
        let s = |url: String| {
            let http = http.clone();
            let token = token.clone();
            async move {
                http.request(Method::GET, url)
                    .headers(headers(&token, None))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        let del = http
            .delete(format!("{network}/v2.0/ports/{port}"))
            .headers(headers(&token, None))
            .send()
            .await
            .unwrap();
        assert_eq!(del.status(), 204);
        assert_eq!(s(format!("{network}/v2.0/networks")).await, 200);
        assert_eq!(s(format!("{image}/v2/images/{port}")).await, 200);
        assert_eq!(s(format!("{volume}/volumes/detail")).await, 200);
        assert_eq!(
            s(format!("{placement}/resource_providers/{port}/inventories")).await,
            200
        );
        assert_eq!(s(format!("{compute}/")).await, 200);

        let c = proxy.counts();
        let want = [
            ("identity", "POST /auth/tokens"),
            ("identity", "GET /auth/tokens"),
            ("identity", "GET /auth/catalog"),
            ("identity", "GET /"),
            ("compute", "GET /servers/detail"),
            ("compute", "POST /servers"),
            ("compute", "GET /"),
            ("network", "GET /big"),
            ("network", "DELETE /ports/{id}"),
            ("network", "GET /networks"),
            ("image", "GET /images/{id}"),
            ("block-storage", "GET /volumes/detail"),
            ("placement", "GET /resource_providers/{id}/inventories"),
        ];
        for (service, op) in want {
            assert_eq!(c.operation(service, op), 1, "{service} {op}: {c:#?}");
        }
        assert_eq!(c.total, want.len() as u64, "{c:#?}");
        assert_eq!(c.services["compute"].methods["GET"], 2);
        assert_eq!(c.responses("compute", "202"), 1);
        assert_eq!(c.responses("network", "204"), 1);
        assert_eq!(c.responses("identity", "201"), 1);
        // Every request reached its fake host.
        assert_eq!(cloud.hits().len(), want.len());

        // The control API serves the same counts; reset zeroes them.
        let control = Control::new(&origin);
        assert_eq!(control.counts().await.unwrap(), c);
        control.reset_counts().await.unwrap();
        let c = control.counts().await.unwrap();
        assert_eq!((c.total, c.services.len()), (0, 0));
        proxy.stop().await;
    }

    #[tokio::test]
    async fn streams_answers() {
        let (cloud, proxy) = setup(FaultSet::default()).await;
        let (_, catalog) = token(&proxy).await;
        let network = endpoint(&catalog, "network");
        let mut resp = http()
            .get(format!("{network}/v2.0/stream"))
            .send()
            .await
            .unwrap();
        // The fake holds the rest until released: a buffering proxy would never deliver this.
        let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the first chunk arrives before the answer is complete")
            .unwrap()
            .unwrap();
        assert_eq!(first, "first\n");
        cloud.release_stream();
        let rest = resp.bytes().await.unwrap();
        assert_eq!(rest, "rest\n");
    }

    #[tokio::test]
    async fn capow_finds_every_service_through_the_proxy_and_honours_retry_after() {
        use capow::openstack::network::ListFilter;
        use capow::openstack::{ClientOptions, CloudConfig, Metrics, Session};
        let (cloud, proxy) = setup(FaultSet {
            seed: Some(1),
            rules: vec![FaultRule {
                service: Some("network".into()),
                max_count: Some(1),
                ..FaultRule::new(Fault::Status {
                    code: 429,
                    retry_after: Some(1),
                })
            }],
        })
        .await;
        let yaml = proxy.clouds_yaml(&cloud.clouds_yaml(), "fake").unwrap();
        let config = CloudConfig::from_clouds_yaml(&yaml, "fake", None).unwrap();
        let session =
            Session::new(config, None, ClientOptions::default(), Metrics::default()).unwrap();
        let servers = session
            .compute()
            .list_servers_by_tags(&["t1"])
            .await
            .unwrap();
        assert!(servers.is_empty());
        let networks = session
            .network()
            .list_networks(&ListFilter::default())
            .await
            .unwrap();
        assert!(networks.is_empty());

        let c = proxy.counts();
        assert_eq!(c.operation("identity", "POST /auth/tokens"), 1, "{c:#?}");
        assert_eq!(c.operation("compute", "GET /servers/detail"), 1);
        // One 429, then capow's retry after the Retry-After second.
        assert_eq!(c.operation("network", "GET /networks"), 2);
        assert_eq!(c.responses("network", "429"), 1);
        assert_eq!(c.responses("network", "200"), 1);
        let rule = c.faults[0].stats;
        assert_eq!((rule.injected, rule.retry_after_windows), (1, 1));
        assert_eq!(
            rule.arrived_during_retry_after, 0,
            "capow waited out Retry-After"
        );
        assert_eq!(c.faults[0].windows[0].arrived, 0);
        // Nothing went around the proxy.
        assert_eq!(cloud.hits().len() as u64, c.total - 1);
    }

    #[tokio::test]
    async fn counts_requests_inside_a_retry_after_window() {
        let (_cloud, proxy) = setup(FaultSet {
            seed: Some(1),
            rules: vec![FaultRule {
                service: Some("network".into()),
                max_count: Some(1),
                ..FaultRule::new(Fault::Status {
                    code: 429,
                    retry_after: Some(300),
                })
            }],
        })
        .await;
        let (token, catalog) = token(&proxy).await;
        let (network, compute) = (endpoint(&catalog, "network"), endpoint(&catalog, "compute"));
        let http = http();
        let get = |url: String| {
            let (http, token) = (http.clone(), token.clone());
            async move {
                let r = http
                    .get(url)
                    .headers(headers(&token, None))
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned()),
                )
            }
        };
        // A client that ignores Retry-After: the 429, then two more at once.
        assert_eq!(
            get(format!("{network}/v2.0/networks")).await,
            (429, Some("300".into()))
        );
        assert_eq!(get(format!("{network}/v2.0/networks")).await.0, 200);
        assert_eq!(get(format!("{network}/v2.0/ports")).await.0, 200);
        // Another service's requests do not count.
        assert_eq!(get(format!("{compute}/servers/detail")).await.0, 200);
        let report = proxy.counts().faults[0].clone();
        let w = &report.windows[..];
        assert_eq!(w.len(), 1);
        assert_eq!(
            (
                w[0].service.as_str(),
                w[0].operation.as_str(),
                w[0].retry_after_secs,
                w[0].arrived
            ),
            ("network", "GET /networks", 300, 2)
        );
        assert_eq!(
            report.stats,
            RuleStats {
                matched: 1,
                injected: 1,
                retry_after_windows: 1,
                arrived_during_retry_after: 2
            }
        );
    }

    #[tokio::test]
    async fn injects_each_fault_kind() {
        let (cloud, proxy) = setup(FaultSet::default()).await;
        let (token, catalog) = token(&proxy).await;
        let compute = endpoint(&catalog, "compute");
        let network = endpoint(&catalog, "network");
        let http = http();
        let install = |rules: Vec<FaultRule>| {
            proxy
                .set_faults(&FaultSet {
                    seed: Some(5),
                    rules,
                })
                .unwrap()
        };
        let post_servers = || {
            http.post(format!("{compute}/servers"))
                .headers(headers(&token, Some("compute 2.61")))
                .json(&json!({"server": {"name": "s"}}))
                .send()
        };
        let get_networks = || {
            http.get(format!("{network}/v2.0/networks"))
                .headers(headers(&token, None))
                .send()
        };
        let posts = || cloud.count("compute", "POST", "/v2.1/servers");

        // 500, 503 and 429 answers, not forwarded; the selectors narrow them.
        for (code, retry_after) in [(500, None), (503, None), (429, Some(9))] {
            install(vec![FaultRule {
                service: Some("compute".into()),
                method: Some("post".into()),
                path: Some("^/servers$".into()),
                ..FaultRule::new(Fault::Status { code, retry_after })
            }]);
            let before = posts();
            let resp = post_servers().await.unwrap();
            assert_eq!(resp.status().as_u16(), code);
            assert_eq!(resp.headers()["x-osproxy-fault"], "0");
            assert_eq!(
                resp.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap()),
                retry_after.map(|s| s.to_string()).as_deref()
            );
            assert_eq!(posts(), before, "a status fault is not forwarded");
            assert_eq!(
                get_networks().await.unwrap().status(),
                200,
                "other services pass"
            );
            let get = http
                .get(format!("{compute}/servers/detail"))
                .headers(headers(&token, None));
            assert_eq!(
                get.send().await.unwrap().status(),
                200,
                "other operations pass"
            );
        }

        // Delay after the upstream answered: the answer comes no sooner than the delay.
        install(vec![FaultRule {
            service: Some("network".into()),
            ..FaultRule::new(Fault::Delay {
                ms: 300,
                before: false,
            })
        }]);
        let started = Instant::now();
        let resp = get_networks().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-osproxy-fault"], "0");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Delay before forwarding: same for the client.
        install(vec![FaultRule {
            service: Some("network".into()),
            ..FaultRule::new(Fault::Delay {
                ms: 300,
                before: true,
            })
        }]);
        let started = Instant::now();
        assert_eq!(get_networks().await.unwrap().status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A delay past the client's timeout: the client gives up, the upstream did the work.
        install(vec![FaultRule {
            method: Some("POST".into()),
            ..FaultRule::new(Fault::Delay {
                ms: 20_000,
                before: false,
            })
        }]);
        let before = posts();
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let err = impatient
            .post(format!("{compute}/servers"))
            .headers(headers(&token, None))
            .json(&json!({"server": {}}))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        crate::Poll::new("the POST at the upstream", Duration::from_secs(5))
            .every(Duration::from_millis(50))
            .until(|| async { posts() > before })
            .await;
        assert_eq!(posts(), before + 1, "the upstream got the request");

        // A busy upstream: the client gives up while the request waits in the queue, and the
        // upstream still processes it afterwards (a delay before forwarding would drop it).
        install(vec![FaultRule {
            method: Some("POST".into()),
            ..FaultRule::new(Fault::Busy { ms: 1_000 })
        }]);
        let before = posts();
        let err = impatient
            .post(format!("{compute}/servers"))
            .headers(headers(&token, None))
            .json(&json!({"server": {"name": "queued"}}))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(posts(), before, "still queued when the client gave up");
        crate::Poll::new("the POST at the upstream", Duration::from_secs(5))
            .every(Duration::from_millis(50))
            .until(|| async { posts() > before })
            .await;
        assert_eq!(posts(), before + 1, "processed after the client had gone");

        // Reset before forwarding: no answer, the upstream never saw it.
        install(vec![FaultRule {
            method: Some("POST".into()),
            ..FaultRule::new(Fault::ResetBefore)
        }]);
        let before = posts();
        let err = post_servers().await.unwrap_err();
        assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
        assert_eq!(posts(), before);
        // Reset after forwarding: no answer, but the upstream did the work.
        install(vec![FaultRule {
            method: Some("POST".into()),
            ..FaultRule::new(Fault::ResetAfter)
        }]);
        let err = post_servers().await.unwrap_err();
        assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
        assert_eq!(posts(), before + 1);
        // The proxy still serves new connections.
        assert_eq!(get_networks().await.unwrap().status(), 200);
        let c = proxy.counts();
        assert_eq!(c.responses("compute", "reset"), 2, "{c:#?}");
        assert_eq!(c.faults[0].stats.injected, 1);

        // At most K times.
        install(vec![FaultRule {
            max_count: Some(2),
            service: Some("network".into()),
            ..FaultRule::new(Fault::Status {
                code: 503,
                retry_after: None,
            })
        }]);
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get_networks().await.unwrap().status().as_u16());
        }
        assert_eq!(statuses, [503, 503, 200, 200]);
        let stats = proxy.counts().faults[0].stats;
        assert_eq!((stats.matched, stats.injected), (2, 2));

        // Time windows: not yet started, already stopped, open.
        for (start, stop, want) in [
            (Some(3600.0), None, 200),
            (None, Some(0.0), 200),
            (Some(0.0), Some(3600.0), 500),
        ] {
            install(vec![FaultRule {
                start_after_secs: start,
                stop_after_secs: stop,
                ..FaultRule::new(Fault::Status {
                    code: 500,
                    retry_after: None,
                })
            }]);
            assert_eq!(
                get_networks().await.unwrap().status(),
                want,
                "window {start:?}..{stop:?}"
            );
        }

        // The first matching rule wins; a rule with rate 0 never fires.
        install(vec![
            FaultRule {
                rate: 0.0,
                ..FaultRule::new(Fault::Status {
                    code: 500,
                    retry_after: None,
                })
            },
            FaultRule::new(Fault::Status {
                code: 503,
                retry_after: None,
            }),
            FaultRule::new(Fault::Status {
                code: 500,
                retry_after: None,
            }),
        ]);
        let resp = get_networks().await.unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["x-osproxy-fault"].to_str().unwrap()
            ),
            (503, "1")
        );
        let stats: Vec<_> = proxy
            .counts()
            .faults
            .iter()
            .map(|r| (r.stats.matched, r.stats.injected))
            .collect();
        assert_eq!(stats, [(1, 0), (1, 1), (0, 0)]);
    }

    #[tokio::test]
    async fn the_same_seed_repeats_the_same_faults() {
        let (_cloud, proxy) = setup(FaultSet::default()).await;
        let (token, catalog) = token(&proxy).await;
        let network = endpoint(&catalog, "network");
        let http = http();
        let set = |seed| FaultSet {
            seed: Some(seed),
            rules: vec![FaultRule {
                service: Some("network".into()),
                rate: 0.5,
                ..FaultRule::new(Fault::Status {
                    code: 503,
                    retry_after: None,
                })
            }],
        };
        let mut runs = Vec::new();
        for seed in [42, 42, 43] {
            proxy.set_faults(&set(seed)).unwrap();
            let mut pattern = Vec::new();
            for _ in 0..40 {
                let r = http
                    .get(format!("{network}/v2.0/networks"))
                    .headers(headers(&token, None))
                    .send()
                    .await
                    .unwrap();
                pattern.push(r.status() == 503);
            }
            runs.push(pattern);
        }
        assert_eq!(runs[0], runs[1], "same seed, same faults");
        assert_ne!(runs[0], runs[2], "another seed, other faults");
        let hits = runs[0].iter().filter(|f| **f).count();
        assert!((5..=35).contains(&hits), "rate 0.5 gave {hits} of 40");
        assert_eq!(
            proxy.counts().faults[0].stats.injected as usize,
            runs[2].iter().filter(|f| **f).count()
        );
    }

    #[tokio::test]
    async fn control_api_validates_and_keeps_the_seed() {
        let (_cloud, proxy) = setup(FaultSet {
            seed: Some(9),
            rules: Vec::new(),
        })
        .await;
        let http = http();
        let url = format!("{}/_control/faults", proxy.url());
        for bad in [
            json!({"rules": [{"path": "(", "fault": {"kind": "reset_before"}}]}),
            json!({"rules": [{"rate": 1.5, "fault": {"kind": "reset_before"}}]}),
            json!({"rules": [{"fault": {"kind": "status", "code": 200}}]}),
            json!({"rules": [{"fault": {"kind": "delay", "ms": 9_000_000}}]}),
            json!({"rules": [{"fault": {"kind": "teleport"}}]}),
            json!({"rules": [{"servcie": "compute", "fault": {"kind": "reset_before"}}]}),
        ] {
            let resp = http.put(&url).json(&bad).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{bad}");
        }
        let rule = json!({"name": "n", "service": "compute", "method": "GET", "path": "^/servers/detail$",
            "rate": 0.25, "start_after_secs": 1.0, "stop_after_secs": 2.0, "max_count": 3,
            "fault": {"kind": "status", "code": 429, "retry_after": 4}});
        let resp = http
            .put(&url)
            .json(&json!({"rules": [rule]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let set: FaultSet = http.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(set.seed, Some(9), "a PUT without a seed keeps it");
        assert_eq!(serde_json::to_value(&set.rules[0]).unwrap(), rule);
        let c = Control::new(&proxy.url()).counts().await.unwrap();
        assert_eq!(
            (c.seed, c.faults.len(), c.faults[0].rule.name.as_deref()),
            (9, 1, Some("n"))
        );
        let resp = http
            .get(format!("{}/_control/nothing", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(proxy.counts().total, 0, "control requests are not counted");
    }

    #[tokio::test]
    async fn stays_on_loopback() {
        let mut config = Config::new("http://127.0.0.1:5000/v3");
        config.listen = SocketAddr::from(([0, 0, 0, 0], 0));
        assert!(Proxy::start(config).await.is_err());
        assert!(
            Proxy::start(Config::new("http://192.0.2.1:5000/v3"))
                .await
                .is_err()
        );
        assert!(
            Proxy::start(Config::new("https://127.0.0.1:5000/v3"))
                .await
                .is_err()
        );
        let proxy = Proxy::start(Config::new("http://127.0.0.1:1/v3"))
            .await
            .unwrap();
        assert_eq!(proxy.addr().ip(), IpAddr::from([127, 0, 0, 1]));
        assert_ne!(proxy.addr().port(), 0);
        // A target off loopback is refused before any connection is made.
        let resp = http()
            .get(format!("{}/_/192.0.2.1:80/x", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        // An upstream that is down: 502, counted.
        let resp = http()
            .get(format!("{}/v3", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(proxy.counts().responses("identity", "502"), 1);
    }
}

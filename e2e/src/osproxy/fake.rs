//! A fake Keystone and two fake service hosts on 127.0.0.1 (axum), to test [`super::Proxy`]
//! without OpenStack.
//!
//! The token's catalog (Keystone v3 shape, <https://docs.openstack.org/api-ref/identity/v3/>)
//! puts two services on each host, so the proxy has to tell them apart by path:
//!
//! | type | URL |
//! |---|---|
//! | identity | `http://127.0.0.1:<keystone>/v3` |
//! | compute | `http://127.0.0.1:<compute>/v2.1` |
//! | block-storage and volumev3 | `http://127.0.0.1:<compute>/v3/<PROJECT>` |
//! | network | `http://127.0.0.1:<network>` |
//! | image | `http://127.0.0.1:<network>/image` |
//! | placement | `http://127.0.0.1:<network>/placement` |
//!
//! Each endpoint is listed for the `public` and the `internal` interface. A service host
//! records every request ([`Hit`]) and answers:
//! - `GET .../big`: [`BIG_LEN`] bytes of [`big_body`] (`application/octet-stream`);
//! - `GET .../stream`: `first\n`, then, once [`FakeCloud::release_stream`] was called (or after
//!   10 s), `rest\n`: a proxy that buffers answers cannot deliver the first chunk early;
//! - `DELETE`: 204;
//! - anything else: a JSON echo of the request (status 202 and a `Location` for POST) with
//!   empty `servers` and `networks` lists, so capow's list calls parse it, a `links` entry
//!   pointing at the request itself and an `other` field holding an absolute URL outside
//!   `links` (which the proxy must leave alone).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

/// The token the fake Keystone issues.
pub const TOKEN: &str = "fake-token-0001";
/// The project the token is scoped to (32 hex digits, like Keystone's IDs).
pub const PROJECT: &str = "0123456789abcdef0123456789abcdef";
/// Length of the `GET .../big` answer.
pub const BIG_LEN: usize = 3 << 20;

/// Byte `i` of the `GET .../big` answer.
pub fn big_body() -> Vec<u8> {
    (0..BIG_LEN).map(|i| (i % 251) as u8).collect()
}

/// One request a fake host received.
#[derive(Clone, Debug)]
pub struct Hit {
    /// `keystone`, `compute` or `network` (the host).
    pub host: &'static str,
    /// HTTP method.
    pub method: String,
    /// Path as received.
    pub path: String,
    /// Query as received.
    pub query: Option<String>,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body as received.
    pub body: Bytes,
}

struct Shared {
    hits: Mutex<Vec<Hit>>,
    release: tokio::sync::Notify,
    keystone: SocketAddr,
    compute: SocketAddr,
    network: SocketAddr,
}

/// The running fake cloud; its servers stop when it is dropped.
pub struct FakeCloud {
    /// Fake Keystone.
    pub keystone: SocketAddr,
    /// Host of compute and block-storage.
    pub compute: SocketAddr,
    /// Host of network, image and placement.
    pub network: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FakeCloud {
    /// Starts the three hosts on free loopback ports.
    pub async fn start() -> FakeCloud {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (k, c, n) = (
            bind().await.expect("bind"),
            bind().await.expect("bind"),
            bind().await.expect("bind"),
        );
        let shared = Arc::new(Shared {
            hits: Mutex::new(Vec::new()),
            release: tokio::sync::Notify::new(),
            keystone: k.local_addr().expect("addr"),
            compute: c.local_addr().expect("addr"),
            network: n.local_addr().expect("addr"),
        });
        let mut tasks = Vec::new();
        for (listener, host) in [(k, "keystone"), (c, "compute"), (n, "network")] {
            let app = axum::Router::new()
                .fallback(move |state: State<Arc<Shared>>, req: Request| handle(state, host, req))
                .with_state(shared.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }));
        }
        FakeCloud {
            keystone: shared.keystone,
            compute: shared.compute,
            network: shared.network,
            shared,
            tasks,
        }
    }

    /// `http://127.0.0.1:<keystone>/v3`.
    pub fn auth_url(&self) -> String {
        format!("http://{}/v3", self.keystone)
    }

    /// A clouds.yaml with cloud `fake` (password auth, project-scoped) on this Keystone.
    pub fn clouds_yaml(&self) -> String {
        json!({"clouds": {"fake": {
            "auth": {"auth_url": self.auth_url(), "username": "demo", "password": "secret",
                     "project_name": "demo", "user_domain_name": "Default",
                     "project_domain_name": "Default"},
            "region_name": "RegionOne", "interface": "public"}}})
        .to_string()
    }

    /// Every request received so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().expect("hits").clone()
    }

    /// Requests received by `host` with `method` whose path ends with `suffix`.
    pub fn count(&self, host: &str, method: &str, suffix: &str) -> usize {
        self.hits()
            .iter()
            .filter(|h| h.host == host && h.method == method && h.path.ends_with(suffix))
            .count()
    }

    /// Lets a pending `GET .../stream` answer finish.
    pub fn release_stream(&self) {
        self.shared.release.notify_one();
    }
}

fn catalog(s: &Shared) -> Value {
    let (k, c, n) = (s.keystone, s.compute, s.network);
    let entries = [
        ("identity", format!("http://{k}/v3")),
        ("compute", format!("http://{c}/v2.1")),
        ("block-storage", format!("http://{c}/v3/{PROJECT}")),
        ("volumev3", format!("http://{c}/v3/{PROJECT}")),
        ("network", format!("http://{n}")),
        ("image", format!("http://{n}/image")),
        ("placement", format!("http://{n}/placement")),
    ];
    Value::Array(
        entries
            .iter()
            .map(|(t, url)| {
                json!({"type": t, "name": t, "id": format!("svc-{t}"), "endpoints": [
                    {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": url, "id": format!("{t}-pub")},
                    {"interface": "internal", "region_id": "RegionOne", "region": "RegionOne", "url": url, "id": format!("{t}-int")},
                ]})
            })
            .collect(),
    )
}

fn json_answer(status: StatusCode, extra: &[(header::HeaderName, String)], v: &Value) -> Response {
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response();
    for (name, value) in extra {
        if let Ok(v) = value.parse() {
            resp.headers_mut().insert(name.clone(), v);
        }
    }
    resp
}

async fn handle(State(s): State<Arc<Shared>>, host: &'static str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let hit = Hit {
        host,
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    s.hits.lock().expect("hits").push(hit);
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let method = parts.method.as_str();
    if host == "keystone" {
        let token = json!({"token": {"expires_at": "2099-01-01T00:00:00.000000Z", "methods": ["password"],
            "project": {"id": PROJECT, "name": "demo"}, "catalog": catalog(&s)}});
        let subject = (
            header::HeaderName::from_static("x-subject-token"),
            TOKEN.to_owned(),
        );
        return match (method, path.trim_end_matches('/')) {
            ("POST", "/v3/auth/tokens") => json_answer(StatusCode::CREATED, &[subject], &token),
            ("GET", "/v3/auth/tokens")
                if header("x-subject-token") == TOKEN && header("x-auth-token") == TOKEN =>
            {
                json_answer(StatusCode::OK, &[subject], &token)
            }
            ("GET", "/v3/auth/catalog") => json_answer(
                StatusCode::OK,
                &[],
                &json!({"catalog": catalog(&s), "links": {"self": format!("http://{}/v3/auth/catalog", s.keystone), "next": null}}),
            ),
            ("GET", "/v3") => json_answer(
                StatusCode::OK,
                &[],
                &json!({"version": {"id": "v3.14", "status": "stable",
                    "links": [{"rel": "self", "href": format!("http://{}/v3/", s.keystone)}]}}),
            ),
            _ => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let me = if host == "compute" {
        s.compute
    } else {
        s.network
    };
    if method == "GET" && path.ends_with("/big") {
        return (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            big_body(),
        )
            .into_response();
    }
    if method == "GET" && path.ends_with("/stream") {
        let shared = s.clone();
        let chunks = futures::stream::unfold(0u8, move |step| {
            let shared = shared.clone();
            async move {
                match step {
                    0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first\n")), 1)),
                    1 => {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            shared.release.notified(),
                        )
                        .await;
                        Some((Ok(Bytes::from_static(b"rest\n")), 2))
                    }
                    _ => None,
                }
            }
        });
        return (
            [(header::CONTENT_TYPE, "text/plain")],
            Body::from_stream(chunks),
        )
            .into_response();
    }
    if method == "DELETE" {
        return StatusCode::NO_CONTENT.into_response();
    }
    let echo = json!({
        "host": host,
        "method": method,
        "path": path,
        "query": parts.uri.query(),
        "x_auth_token": header("x-auth-token"),
        "openstack_api_version": header("openstack-api-version"),
        "body_len": body.len(),
        "servers": [],
        "networks": [],
        "links": [{"rel": "self", "href": format!("http://{me}{path}")}],
        "other": format!("http://{me}/not-a-link"),
    });
    if method == "POST" {
        let location = format!("http://{me}{path}/6f1c2c4e-1111-4222-8333-944455556666");
        return json_answer(StatusCode::ACCEPTED, &[(header::LOCATION, location)], &echo);
    }
    json_answer(StatusCode::OK, &[], &echo)
}

//! What the controllers' reconcile, error policy and run loop share: the bound of one reconcile,
//! the finalizer around apply and cleanup, the accounting of a failed reconcile and the drain
//! of the controller's result stream. Each controller keeps only what differs (its watches, its
//! retry delays).

use std::fmt::{Debug, Display};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::{Context, Error, ReconcileMetrics};

/// The error of a controller's reconcile as the shared tails see it.
pub(crate) trait Failure: Display {
    /// The error of a reconcile dropped after running for `bound`.
    fn timed_out(bound: Duration) -> Self;

    /// Metrics label of the `capow_reconcile_failures` counter.
    fn category(&self) -> &'static str;

    /// True for an outcome that is retried without being counted or logged as a failure (a
    /// deletion still under way, a write refused because the reconcile read a stale object).
    fn expected(&self) -> bool {
        false
    }
}

impl Failure for Error {
    fn timed_out(bound: Duration) -> Self {
        Error::TimedOut(bound)
    }

    fn category(&self) -> &'static str {
        Error::category(self)
    }

    fn expected(&self) -> bool {
        matches!(self.unwrap_finalizer(), Error::DeletionInProgress)
            || self.is_conflict()
            || self.is_stale_finalizer_add()
    }
}

/// `namespace/name` of `obj`, for logs.
pub(crate) fn object_name<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// An API of `K` in `namespace`, or in all namespaces.
pub(crate) fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs `reconcile` for at most `bound`: a reconcile still running then is dropped (each step
/// is safe to interrupt, as after a crash) and fails with [`Failure::timed_out`], so that it
/// is retried.
pub(crate) async fn bounded<T, E: Failure>(
    bound: Duration,
    reconcile: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(bound, reconcile).await {
        Ok(result) => result,
        Err(_) => Err(E::timed_out(bound)),
    }
}

/// One reconcile of `obj` by `controller` behind the finalizer `finalizer_name`: `apply` while
/// the object lives, `cleanup` once it is being deleted (the finalizer is removed when cleanup
/// succeeds), timed in the reconcile metrics, in a `reconcile` span naming the object and
/// [`bounded`] by the reconcile timeout.
pub(crate) async fn finalized<K, A, C>(
    ctx: &Context,
    controller: &'static str,
    finalizer_name: &str,
    obj: Arc<K>,
    apply: impl FnOnce(Arc<K>) -> A,
    cleanup: impl FnOnce(Arc<K>) -> C,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Debug,
    A: Future<Output = Result<Action, Error>>,
    C: Future<Output = Result<Action, Error>>,
{
    let _timer = ctx.metrics.start(controller);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let span = tracing::info_span!("reconcile", kind = %K::kind(&()), object = %object_name(&*obj));
    let run = finalizer(&api, finalizer_name, obj, |event| async move {
        match event {
            FinalizerEvent::Apply(obj) => apply(obj).await,
            FinalizerEvent::Cleanup(obj) => cleanup(obj).await,
        }
    })
    .instrument(span);
    bounded(ctx.config.reconcile_timeout, async {
        run.await.map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await
}

/// The error policy of every controller: counts and logs the failed reconcile of `obj`
/// (debug only when [`Failure::expected`]) and retries it after `retry`.
pub(crate) fn requeue<K: Resource<DynamicType = ()>, E: Failure>(
    metrics: &ReconcileMetrics,
    controller: &'static str,
    obj: &K,
    error: &E,
    retry: Duration,
) -> Action {
    if error.expected() {
        tracing::debug!(controller, object = %object_name(obj), error = %error, "Reconcile did not finish; retrying");
    } else {
        metrics.failure(controller, error.category());
        tracing::warn!(controller, kind = %K::kind(&()), object = %object_name(obj), error = %error, "Reconcile failed");
    }
    Action::requeue(retry)
}

/// Drives a controller's result stream to its end (the controller's graceful shutdown),
/// logging the errors of its watches and queue at debug level (reconcile errors are logged by
/// [`requeue`]).
pub(crate) async fn drain<T, E: Display>(
    controller: &'static str,
    results: impl Stream<Item = Result<T, E>>,
) {
    results
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(controller, error = %e, "Controller event");
            }
        })
        .await;
}

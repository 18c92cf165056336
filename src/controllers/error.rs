//! The error of a reconcile shared by every controller: its variants, the metrics category and
//! `Ready` condition reason ([`Reason`]) of each, and when a failed reconcile is retried.

use std::time::Duration;

use crate::api::conditions::reasons;
use crate::openstack;

/// The `Ready` condition reason a failed reconcile reports ([`reasons`] in
/// `src/api/conditions.rs`; CAPO v1beta2 names where CAPO has one). An [`Error::OpenStack`]
/// carries the one its call site states ([`Error::openstack_as`]); the other variants have a
/// fixed one ([`Error::failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// [`reasons::INVALID_MACHINE_SPEC`]: the spec names something missing or ambiguous.
    InvalidMachineSpec,
    /// [`reasons::INVALID_IDENTITY`]: the identityRef or its Secret is unusable.
    InvalidIdentity,
    /// [`reasons::OPENSTACK_AUTHENTICATION_FAILED`]: Keystone refused the credentials.
    OpenStackAuthenticationFailed,
    /// [`reasons::OPENSTACK_ERROR`]: any other failed call (OpenStack or Kubernetes).
    OpenStackError,
    /// [`reasons::INSTANCE_CREATE_FAILED`]: Nova refused to create the server.
    InstanceCreateFailed,
    /// [`reasons::PORT_CREATE_FAILED`]: Neutron refused to create a port.
    PortCreateFailed,
    /// [`reasons::VOLUME_CREATE_FAILED`]: Cinder refused a volume or the volume failed.
    VolumeCreateFailed,
    /// [`reasons::DELETING`]: deletion is under way (not a failure).
    Deleting,
    /// [`reasons::INSTANCE_DELETE_FAILED`]: deleting the OpenStack resources failed.
    InstanceDeleteFailed,
}

impl Reason {
    /// The condition reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidMachineSpec => reasons::INVALID_MACHINE_SPEC,
            Reason::InvalidIdentity => reasons::INVALID_IDENTITY,
            Reason::OpenStackAuthenticationFailed => reasons::OPENSTACK_AUTHENTICATION_FAILED,
            Reason::OpenStackError => reasons::OPENSTACK_ERROR,
            Reason::InstanceCreateFailed => reasons::INSTANCE_CREATE_FAILED,
            Reason::PortCreateFailed => reasons::PORT_CREATE_FAILED,
            Reason::VolumeCreateFailed => reasons::VOLUME_CREATE_FAILED,
            Reason::Deleting => reasons::DELETING,
            Reason::InstanceDeleteFailed => reasons::INSTANCE_DELETE_FAILED,
        }
    }
}

/// Errors of a reconcile, shared by the machine, cluster and machine template controllers and
/// the orphan sweep. Each maps to a `Ready` condition reason via [`Error::failure`] and to a
/// metrics label via [`Error::category`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec names something that does not exist or is ambiguous.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// Field path, e.g. `spec.flavor.filter.name`.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// The identityRef or its Secret is unusable.
    #[error("{field}: {message}")]
    InvalidIdentity {
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },

    /// An OpenStack call failed.
    #[error("failed to {action}: {source}")]
    OpenStack {
        /// What capow was doing.
        action: &'static str,
        /// The condition reason of this step's failure (unless Keystone refused the
        /// credentials: then [`Reason::OpenStackAuthenticationFailed`]).
        reason: Reason,
        /// The OpenStack error (service, status, request id, message).
        #[source]
        source: openstack::Error,
    },

    /// A Kubernetes API call failed.
    #[error("failed to {action}: {}", crate::controllers::describe_kube_error(.source))]
    Kube {
        /// What capow was doing.
        action: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// More than one server carries this object's UID tag.
    #[error("{0}")]
    Duplicate(String),

    /// A volume capow created went to `error` in Cinder.
    #[error("{0}")]
    VolumeFailed(String),

    /// The reconcile ran longer than its bound and was dropped.
    #[error("the reconcile did not finish within {} s and was stopped; it is retried", .0.as_secs())]
    TimedOut(Duration),

    /// Deletion is under way; keeps the finalizer until the next check (not a failure).
    #[error("waiting for OpenStack to delete the server")]
    DeletionInProgress,

    /// Deleting is blocked by a problem that needs an operator.
    #[error("cannot delete the OpenStack resources: {0}")]
    DeletionBlocked(Box<Error>),

    /// Adding or removing the finalizer failed, or the reconcile inside failed.
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub(crate) fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    /// An [`Error::OpenStack`] of `action` reported as [`Reason::OpenStackError`].
    pub(crate) fn openstack(action: &'static str) -> impl FnOnce(openstack::Error) -> Error {
        Self::openstack_as(Reason::OpenStackError, action)
    }

    /// An [`Error::OpenStack`] of `action` reported as `reason` (a create step of its own).
    pub(crate) fn openstack_as(
        reason: Reason,
        action: &'static str,
    ) -> impl FnOnce(openstack::Error) -> Error {
        move |source| Error::OpenStack {
            action,
            reason,
            source,
        }
    }

    /// Metrics label (the variant name).
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::InvalidIdentity { .. } => "InvalidIdentity",
            Error::OpenStack { .. } => "OpenStack",
            Error::Kube { .. } => "Kube",
            Error::Duplicate(_) => "Duplicate",
            Error::VolumeFailed(_) => "VolumeFailed",
            Error::DeletionInProgress => "DeletionInProgress",
            Error::TimedOut(_) => "TimedOut",
            Error::DeletionBlocked(_) => "DeletionBlocked",
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "Finalizer",
            },
        }
    }

    /// The `Ready` condition reason of this error.
    pub fn failure(&self) -> Reason {
        match self {
            Error::InvalidSpec { .. } => Reason::InvalidMachineSpec,
            Error::InvalidIdentity { .. } => Reason::InvalidIdentity,
            Error::OpenStack { source, .. } if source.is_unauthorized() => {
                Reason::OpenStackAuthenticationFailed
            }
            Error::OpenStack { reason, .. } => *reason,
            Error::DeletionInProgress => Reason::Deleting,
            Error::DeletionBlocked(_) => Reason::InstanceDeleteFailed,
            Error::VolumeFailed(_) => Reason::VolumeCreateFailed,
            Error::Kube { .. } | Error::Duplicate(_) | Error::Finalizer(_) | Error::TimedOut(_) => {
                Reason::OpenStackError
            }
        }
    }

    /// `Ready` condition reason string of this error ([`Error::failure`]).
    pub fn reason(&self) -> &'static str {
        self.failure().as_str()
    }

    /// The apply/cleanup error inside a [`Error::Finalizer`]; `self` for any other error or
    /// for a finalizer error of its own (adding or removing the finalizer failed).
    pub(crate) fn unwrap_finalizer(&self) -> &Error {
        match self {
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
                _ => self,
            },
            e => e,
        }
    }

    /// When to retry after this reconcile error, for the machine and the cluster controllers:
    /// a deletion in progress at the build poll interval, input errors at `input_retry`, an
    /// OpenStack answer with `Retry-After` after that delay (at least 1 s), anything else after
    /// 10 s (the controller's own backoff would need per-object state; the OpenStack client's
    /// rate limit protects the cloud).
    pub(crate) fn retry_after(&self, config: &crate::controllers::ControllerConfig) -> Duration {
        let inner = self.unwrap_finalizer();
        if matches!(inner, Error::DeletionInProgress) {
            return config.build_poll;
        }
        if self.is_conflict() {
            return Duration::from_millis(200);
        }
        if self.is_stale_finalizer_add() {
            return Duration::from_secs(1);
        }
        if inner.needs_input_change() {
            return config.input_retry;
        }
        if let Error::OpenStack { source, .. } = inner
            && let Some(after) = source.retry_after()
        {
            return after.max(Duration::from_secs(1));
        }
        Duration::from_secs(10)
    }

    /// True when a write was refused because the object changed since this reconcile read it
    /// (409 Conflict): the reconcile started from a stale cache and a fresh one follows.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self.unwrap_finalizer(), Error::Kube { source, .. } if crate::controllers::is_conflict(source))
    }

    /// True when adding the finalizer was refused with 422 Invalid: kube-runtime's `finalizer`
    /// (kube-runtime 5.0.0, `src/finalizer.rs`) sends a JSON patch whose `test` operation
    /// checks `/metadata/finalizers` as this reconcile read it, and the API server answers 422
    /// when the object changed since (another writer added a finalizer, the cache was behind).
    /// Like a 409 it heals on the next read; retried after 1 s (not the 10 s of other errors,
    /// which delayed the first POST of every new machine that hit it), and not at once, so a
    /// 422 for another reason cannot spin.
    pub(crate) fn is_stale_finalizer_add(&self) -> bool {
        matches!(self, Error::Finalizer(e) if matches!(&**e,
            kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s)) if s.code == 422))
    }

    /// True for errors that only a change of input fixes (retried slowly, not with backoff).
    pub(crate) fn needs_input_change(&self) -> bool {
        match self {
            Error::InvalidSpec { .. } | Error::InvalidIdentity { .. } | Error::Duplicate(_) => true,
            Error::OpenStack { source, .. } => source.is_unauthorized() || source.is_client_error(),
            Error::DeletionBlocked(inner) => inner.needs_input_change(),
            _ => false,
        }
    }
}

/// An [`Error::InvalidSpec`] at `field` (a field path such as `spec.flavor.filter.name`).
pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

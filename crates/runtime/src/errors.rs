//! One classification of errors, from which both the `ignite` exit code and ignited's HTTP
//! status follow, so that a verb fails the same way locally and through the daemon.
//!
//! | class | exit code | HTTP |
//! | --- | --- | --- |
//! | bad input (flags, manifests, validation, an ambiguous name) | 2 | 400 |
//! | a name or ID already taken | 2 | 409 |
//! | no such object | 3 | 404 |
//! | the object's state forbids it (running, not running) | 1 | 409 |
//! | the operation failed | 1 | 500 |

use ignite_store::StoreError;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    BadInput,
    Taken,
    NotFound,
    State,
    Failed,
}

impl Class {
    pub fn exit_code(self) -> u8 {
        match self {
            Class::BadInput | Class::Taken => 2,
            Class::NotFound => 3,
            Class::State | Class::Failed => 1,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Class::BadInput => 400,
            Class::Taken | Class::State => 409,
            Class::NotFound => 404,
            Class::Failed => 500,
        }
    }
}

/// An error and its causes, as one line (`invalid VM "x": spec.cpus: must be …`): the one
/// helper for that, `ignite-net`'s (the lowest crate with errors of several causes).
pub use ignite_net::error_chain as chain;

/// Classifies an error by the first cause in its chain that says what it is.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> Class {
    let chain = std::iter::successors(Some(e), |c| c.source());
    for cause in chain {
        if let Some(se) = cause.downcast_ref::<StoreError>() {
            return match se {
                StoreError::NotFound { .. } => Class::NotFound,
                StoreError::Ambiguous { .. } => Class::BadInput,
                StoreError::NameTaken { .. } | StoreError::UidTaken { .. } => Class::Taken,
                _ => Class::Failed,
            };
        }
        if cause.downcast_ref::<ignite_api::DecodeError>().is_some()
            || cause.downcast_ref::<ignite_api::ValidationErrors>().is_some()
            || cause.downcast_ref::<crate::ConfigError>().is_some()
        {
            return Class::BadInput;
        }
        if let Some(ce) = cause.downcast_ref::<crate::CreateError>() {
            use crate::CreateError as C;
            return match ce {
                C::Store(StoreError::NameTaken { .. } | StoreError::UidTaken { .. }) => Class::Taken,
                C::Store(StoreError::NotFound { .. }) => Class::NotFound,
                C::Store(_) | C::Import(_) => Class::Failed,
                C::Disk { source: ignite_disk::DiskError::TooSmall { .. }, .. } => Class::BadInput,
                C::Disk { .. } => Class::Failed,
                _ => Class::BadInput,
            };
        }
        if let Some(crate::RemoveError::Running { .. } | crate::RemoveError::Starting { .. }) =
            cause.downcast_ref::<crate::RemoveError>()
        {
            return Class::State;
        }
        if let Some(crate::start::StartError::AlreadyRunning { .. }) = cause.downcast_ref::<crate::start::StartError>()
        {
            return Class::State;
        }
        if let Some(crate::stop::StopError::NotRunning { .. } | crate::stop::StopError::Starting { .. }) =
            cause.downcast_ref::<crate::stop::StopError>()
        {
            return Class::State;
        }
        if let Some(se) = cause.downcast_ref::<crate::snapshot::SnapshotError>() {
            use crate::snapshot::SnapshotError as S;
            return match se {
                S::Invalid(_) => Class::BadInput,
                S::NotRunning { .. } | S::Running { .. } | S::Busy { .. } | S::InUse { .. } => Class::State,
                S::Store(StoreError::NameTaken { .. } | StoreError::UidTaken { .. }) => Class::Taken,
                S::Store(StoreError::NotFound { .. }) => Class::NotFound,
                _ => Class::Failed,
            };
        }
    }
    Class::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_refused_for_the_vms_state_is_a_state_error() {
        let running = crate::RemoveError::Running { name: "a".into() };
        let starting = crate::RemoveError::Starting { name: "a".into(), secs: 180 };
        let stop = crate::RemoveError::Stop { name: "a".into(), source: "gone".into() };
        assert_eq!(classify(&running), Class::State);
        assert_eq!(classify(&starting), Class::State);
        assert_eq!(classify(&stop), Class::Failed);
        let starting = crate::stop::StopError::Starting { name: "a".into(), secs: 180 };
        assert_eq!(classify(&starting), Class::State);
    }
}
